"""cluster.yaml: a Ray cluster-launcher config that validates, and its README section."""

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
GPU_INSTANCE = re.compile(r"^(g|p)\d")  # AWS GPU families: g4dn, g5, g6, p3, p4d, p5, ...


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _ray_validate(config: dict) -> None:
    """What `ray up` does before it talks to the cloud: fill defaults, then validate."""
    validate_config(prepare_config(copy.deepcopy(config)))


def _broken(config: dict) -> dict[str, dict]:
    misspelt = copy.deepcopy(config)
    misspelt["max_worker"] = misspelt.pop("max_workers")
    wrong_type = copy.deepcopy(config)
    wrong_type["available_node_types"]["gpu_worker"]["min_workers"] = "0"
    no_node_config = copy.deepcopy(config)
    del no_node_config["available_node_types"]["cpu_worker"]["node_config"]
    return {"misspelt key": misspelt, "wrong type": wrong_type, "missing node_config": no_node_config}


def test_validates_against_the_schema_shipped_with_ray(config, schema):
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(config)
    _ray_validate(config)


@pytest.mark.parametrize("case", ["misspelt key", "wrong type", "missing node_config"])
def test_validators_reject_a_broken_config(config, schema, case):
    broken = _broken(config)[case]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(broken)
    with pytest.raises(jsonschema.ValidationError):
        _ray_validate(broken)


def test_ray_rejects_an_unknown_head_node_type(config):
    broken = copy.deepcopy(config)
    broken["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        _ray_validate(broken)


def test_node_types(config):
    assert config["provider"]["type"] in ("aws", "gcp")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert not GPU_INSTANCE.match(head["node_config"]["InstanceType"])
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    cpu = [t for t in workers if not GPU_INSTANCE.match(t["node_config"]["InstanceType"])]
    gpu = [t for t in workers if GPU_INSTANCE.match(t["node_config"]["InstanceType"])]
    assert cpu and all(t["resources"].get("GPU", 0) == 0 for t in cpu)
    assert gpu and all(t["resources"].get("GPU", 0) >= 1 and t["min_workers"] == 0 for t in gpu)


def test_setup_installs_dwscan_with_the_clients_ray(config):
    installs = [c for c in config["setup_commands"] if "pip install" in c]
    assert any("~/dwscan" in c or "$HOME/dwscan" in c or "dwscan @" in c for c in installs)
    pins = {m for c in installs for m in re.findall(r'"ray\[([^\]]*)\]==([^"]+)"', c)}
    assert pins, "setup_commands must pin ray[default,...] to one version"
    for extras, version in pins:
        assert "default" in extras.split(","), "the job server needs ray[default]"
        assert version == ray.__version__, "the cluster's Ray must be the one clients run"


def test_file_mounts_carry_the_package_and_the_token(config):
    mounts = config["file_mounts"]
    for remote, local in mounts.items():
        if remote.startswith("~/dwscan/"):
            assert (ROOT / local).exists(), local
    mounted = {r.removeprefix("~/dwscan/") for r in mounts}
    assert {"pyproject.toml", "README.md", "pipeline", "jobs", "schemas"} <= mounted
    assert mounts["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_token_auth_is_on(config):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    assert "RAY_AUTH_MODE=disabled" not in (ROOT / "cluster.yaml").read_text()


def test_readme_documents_the_cluster_story():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]
    for needed in ("ray up cluster.yaml", "ray dashboard cluster.yaml", "ray get-auth-token",
                   "RAY_AUTH_MODE=token", "ray job submit", "python -m dwscan.jobs.run",
                   "ray down cluster.yaml"):
        assert needed in section, needed
    assert "RAY_AUTH_MODE=disabled" not in section
    for job in re.findall(r"python -m dwscan\.jobs\.(\w+)", section):
        assert (ROOT / "jobs" / f"{job}.py").exists(), job
