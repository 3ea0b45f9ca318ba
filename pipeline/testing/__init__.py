"""Known answers shared by the tests and the benchmarks: planted zoos and the loopback Hub stand-in."""
