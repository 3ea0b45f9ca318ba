"""`python -m dwscan.schemas`: write schemas/README.md, the column reference of every table."""

from pathlib import Path

from dwscan import schemas

if __name__ == "__main__":
    path = Path(__file__).with_name("README.md")
    path.write_text(schemas.markdown())
    print(f"wrote {path}")
