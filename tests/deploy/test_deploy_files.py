"""The deployment files in deploy/ and the Dockerfile, checked without Docker or systemd (neither
runs here): the compose file is valid by the Compose specification's schema; every service of
the compose file and every systemd unit runs a command line the `orbweaver` parser accepts and
that is the multi-host tests' command (support.service_commands) with its own values; the
values agree with each other (addresses, ports, the database user); secrets reach the services
only through their environment, from files meant for them; every variable used is defined;
the health checks are `orbweaver health` on the address the service listens on. Storage
failover: two storages on the one database, each listening on its own address and advertising
one its peers reach, and every `--storage` listing exactly the storages' addresses. The image's
build stage is the script CI runs."""

from __future__ import annotations

import argparse
import ipaddress
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from orbweaver._config import flag_values
from orbweaver.cli import build_parser
from orbweaver.scheduler.config import SchedulerConfig
from orbweaver.storage.config import StorageConfig
from orbweaver.worker.config import WorkerConfig
from support.cli import REPO
from support.service_commands import COMMANDS, STORAGE, ServiceCommand

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
SYSTEMD = DEPLOY / "systemd"
ETC = "/etc/orbweaver/"
CONFIG_TYPES: dict[str, Any] = {
    "storage": StorageConfig,
    "scheduler": SchedulerConfig,
    "worker": WorkerConfig,
}
ALL_SECRETS = {name for command in COMMANDS.values() for name in command.secrets}


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """What `orbweaver ARGV` would run with; the parser's message when it refuses it."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"orbweaver refuses {argv}") from exc


def load_service_config(
    argv: list[str], env: dict[str, str], config_file: Path, tasks_dir: Path
) -> Any:
    """The configuration the service would start with (as `orbweaver.cli` builds it), with
    `config_file` standing for the `--config` path and `tasks_dir` for a worker's tasks
    directory (which must exist): a bad flag value or file key raises."""
    args = parse_cli(argv)
    cls = CONFIG_TYPES[args.command]
    flags = flag_values(args, cls)
    if args.command == "storage":
        flags["db_url"] = args.db
    if args.command == "worker":
        flags["tasks_dir"] = str(tasks_dir)
    return cls.load(config_file if getattr(args, "config", None) else None, env=env, flags=flags)


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


# ---------------------------------------------------------------------------------------------
# The command table
# ---------------------------------------------------------------------------------------------


def test_a_command_matches_only_with_the_same_flags() -> None:
    values = {
        "db_url": "mariadb://u@h:3306/d",
        "listen": "0.0.0.0:1",
        "advertise": "10.0.0.1:1",
        "config": "/c.toml",
    }
    argv = STORAGE.render(**values)
    assert STORAGE.match(argv) == values
    with pytest.raises(ValueError, match="argument 3 is '--db-file', expected '--listen'"):
        STORAGE.match([*argv[:3], "--db-file", *argv[4:]])
    with pytest.raises(ValueError, match="11 arguments"):
        STORAGE.match([*argv, "--token", "t0ken"])
    with pytest.raises(ValueError, match="7 arguments"):
        STORAGE.match([a for a in argv if a not in ("--advertise", "10.0.0.1:1")])
    with pytest.raises(
        ValueError, match=r"values for \['advertise', 'config', 'db_url', 'listen'\]"
    ):
        STORAGE.render(db_url="x", listen="y")


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_the_table_commands_are_real_commands(command: ServiceCommand) -> None:
    values = {name: "1" for name in command.placeholders}
    args = parse_cli(command.render(**values))
    assert args.command == command.service
    # Secrets are variables the services read, none of them a flag of their own.
    assert not any(a.startswith("--token") or a.startswith("--password") for a in command.args)
    assert set(command.secrets) <= ALL_SECRETS


# ---------------------------------------------------------------------------------------------
# deploy/compose.yaml
# ---------------------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` (an unset or empty VAR is an
    error, as `docker compose` makes it)."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        current = env.get(name, "")
        if op in (":-", "-"):
            return current or arg
        if op in (":?", "?") and not current:
            raise AssertionError(f"compose would stop: ${{{name}}} is unset: {arg}")
        return current

    assert "$$" not in value
    return _VAR.sub(one, value)


def interpolated(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolated(x, env) for x in node]
    if isinstance(node, dict):
        return {k: interpolated(v, env) for k, v in node.items()}
    return node


def env_example() -> tuple[dict[str, str], set[str]]:
    """deploy/env.example: the variables it asks to set (name -> value given there), and those
    it documents as optional (commented out)."""
    required: dict[str, str] = {}
    optional: set[str] = set()
    for line in (DEPLOY / "env.example").read_text().splitlines():
        if m := re.match(r"^([A-Z0-9_]+)=(.*)$", line):
            required[m.group(1)] = m.group(2)
        elif m := re.match(r"^# ([A-Z0-9_]+)=", line):
            optional.add(m.group(1))
    return required, optional


def compose_variables() -> dict[str, str | None]:
    """Every variable the compose file uses: name -> how (':-' with a default, ':?' required)."""
    out: dict[str, str | None] = {}
    for m in _VAR.finditer(COMPOSE.read_text()):
        out.setdefault(m.group(1), m.group(2))
    return out


@pytest.fixture(scope="module")
def secret_values() -> dict[str, str]:
    """A distinct value per secret, to find it wherever it would leak."""
    return {name: f"secret-{name.lower()}-{secrets.token_hex(8)}" for name in ALL_SECRETS}


@pytest.fixture(scope="module")
def compose(secret_values: dict[str, str]) -> dict[str, Any]:
    """The compose file as `docker compose` would run it with env.example filled in."""
    required, _ = env_example()
    env = {name: secret_values.get(name, f"value-of-{name}") for name in required}
    return dict(interpolated(yaml.safe_load(COMPOSE.read_text()), env))


def check_jsonschema(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_compose_file_is_valid_by_the_compose_specification(tmp_path: Path) -> None:
    proc = check_jsonschema("--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The schema does reject a broken file: a misspelt key in a service.
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    healthcheck:", "    healthchek:", 1))
    proc = check_jsonschema("--builtin-schema", "vendor.compose-spec", str(broken))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "healthchek" in proc.stdout


def test_every_compose_variable_is_in_env_example() -> None:
    required, optional = env_example()
    used = compose_variables()
    needed = {name for name, op in used.items() if op != ":-"}
    defaulted = {name for name, op in used.items() if op == ":-"}
    assert needed == set(required), "variables without a default must be set in env.example"
    assert all(used[name] == ":?" for name in needed), "a required variable must say so (:?)"
    assert defaulted == optional, "variables with a default are listed (commented) in env.example"
    assert set(required) == ALL_SECRETS, "env.example holds the secrets of the services"


def orbweaver_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if s.get("image") != "mariadb:11.4"}


def storage_list(value: str) -> list[str]:
    """`--storage a:50051,b:50051` as the services split it (no blanks allowed here)."""
    addresses = value.split(",")
    assert all(a and a == a.strip() for a in addresses), f"--storage {value!r}"
    for address in addresses:
        host_port(address)
    return addresses


WILDCARDS = ("0.0.0.0", "::", "[::]", "")


def is_wildcard_or_loopback(host: str) -> bool:
    """An address no other host can reach a service at (a host name counts as reachable)."""
    if host in WILDCARDS or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def test_compose_runs_the_multihost_commands(
    compose: dict[str, Any], secret_values: dict[str, str], tmp_path: Path
) -> None:
    services = orbweaver_services(compose)
    kinds = sorted(s["command"][0] for s in services.values())
    assert kinds == ["scheduler", "storage", "storage", "worker", "worker"], kinds
    network = ipaddress.ip_network(compose["networks"]["orbweaver"]["ipam"]["config"][0]["subnet"])
    address_of = {
        name: s["networks"]["orbweaver"]["ipv4_address"] for name, s in compose["services"].items()
    }
    assert len(set(address_of.values())) == len(address_of)
    assert all(ipaddress.ip_address(a) in network for a in address_of.values())
    config_file = DEPLOY / compose["configs"]["orbweaver"]["file"]
    values_of: dict[str, dict[str, str]] = {}

    for name, service in services.items():
        argv = [str(a) for a in service["command"]]
        kind = argv[0]
        values = values_of[name] = COMMANDS[kind].match(argv)
        env = {k: str(v) for k, v in service["environment"].items()}
        # The secrets of the table, each from the variable of the same name, and nothing else.
        assert set(env) == set(COMMANDS[kind].secrets), name
        assert all(env[k] == secret_values[k] for k in env), name
        assert not any(v in " ".join(argv) for v in secret_values.values()), name
        load_service_config(argv, env, config_file, tmp_path)
        assert service["restart"] == "always", name
        assert service["init"] is True, name

        if kind in ("storage", "scheduler"):
            host, _ = host_port(values["listen"])
            assert host == address_of[name], f"{name} listens on its own address"
            # The server's overall health (service ""): a standby storage counts as healthy.
            assert service["healthcheck"]["test"] == [
                "CMD", "orbweaver", "health", values["listen"],
            ]  # fmt: skip
            health = parse_cli(service["healthcheck"]["test"][2:])
            assert health.command == "health" and health.service == ""
            mount = {c["source"]: c["target"] for c in service["configs"]}
            assert mount == {"orbweaver": values["config"]}, name
        else:
            assert "healthcheck" not in service, "a worker serves no gRPC to check"
            assert values["ip"] == address_of[name], f"{name} registers its own address"
            tasks = [v for v in service["volumes"] if v.endswith(":" + values["tasks_dir"] + ":ro")]
            assert tasks, f"{name}: the tasks directory is mounted read-only"
            assert int(values["processes"]) >= 1

    storages = [name for name, s in services.items() if s["command"][0] == "storage"]
    (scheduler_name,) = [name for name, s in services.items() if s["command"][0] == "scheduler"]
    workers = [name for name, s in services.items() if s["command"][0] == "worker"]

    # Storage failover: each storage sends clients to the address it listens on (its own on the
    # network, which every peer reaches), has a host name of its own, and publishes its port
    # for the clients on a host port of its own.
    published: list[str] = []
    for name in storages:
        service, values = services[name], values_of[name]
        assert values["advertise"] == values["listen"], f"{name} advertises its own address"
        assert service["hostname"] == name
        (ports,) = service["ports"]
        publish_host, published_port, container_port = str(ports).split(":")
        assert publish_host == "127.0.0.1", f"{name}: published on the loopback by default"
        assert int(container_port) == host_port(values["listen"])[1], name
        published.append(published_port)
    assert len(set(published)) == len(published) == 2, published

    # The addresses services are given are those their peers listen on: every storage, in the
    # services' order, and the scheduler.
    listen_of_storages = [values_of[name]["listen"] for name in storages]
    for name in [scheduler_name, *workers]:
        assert storage_list(values_of[name]["storage"]) == listen_of_storages, name
    for name in workers:
        assert values_of[name]["scheduler"] == values_of[scheduler_name]["listen"], name

    # The database every storage is given is the one the MariaDB container creates, and the
    # password both get is the same variable.
    db = compose["services"]["mariadb"]
    assert len({values_of[name]["db_url"] for name in storages}) == 1, "one database"
    url = urlsplit(values_of[storages[0]]["db_url"])
    assert url.scheme == "mariadb" and url.password is None
    assert url.username == db["environment"]["MARIADB_USER"]
    assert url.hostname == "mariadb" and url.port == 3306
    assert url.path == "/" + db["environment"]["MARIADB_DATABASE"]
    assert db["environment"]["MARIADB_PASSWORD"] == secret_values["ORBWEAVER_DB_PASSWORD"]

    # Start order: each service waits for the health of what it needs (the scheduler for
    # both storages: the leader and the standby).
    healthy = {"condition": "service_healthy"}
    for name in storages:
        assert services[name]["depends_on"] == {"mariadb": healthy}, name
    assert services[scheduler_name]["depends_on"] == {name: healthy for name in storages}
    for name in workers:
        assert services[name]["depends_on"] == {scheduler_name: healthy}, name


# ---------------------------------------------------------------------------------------------
# deploy/systemd
# ---------------------------------------------------------------------------------------------


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file: section -> key -> values in order (keys such as EnvironmentFile repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"{path.name}: no continuation lines"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a setting: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z0-9_]+", key), f"{path.name}: {line!r}"
            out[key] = value
    return out


def shipped(installed: str) -> Path:
    """The file in deploy/ that becomes `installed` under /etc/orbweaver."""
    assert installed.startswith(ETC), installed
    name = installed[len(ETC) :]
    for candidate in (SYSTEMD / name, SYSTEMD / f"{name}.example", DEPLOY / name):
        if candidate.exists():
            return candidate
    raise AssertionError(f"{installed}: deploy/ ships no such file")


UNITS = sorted(SYSTEMD.glob("*.service"))


def test_there_is_a_unit_per_service() -> None:
    assert [u.name for u in UNITS] == [
        "orbweaver-scheduler.service", "orbweaver-storage.service", "orbweaver-worker.service",
    ]  # fmt: skip


@pytest.mark.parametrize("unit_path", UNITS, ids=[u.stem for u in UNITS])
def test_a_unit_runs_the_multihost_command_with_secrets_from_root_only_files(
    unit_path: Path, secret_values: dict[str, str], tmp_path: Path
) -> None:
    unit = read_unit(unit_path)
    service = unit["Service"]
    assert service["Restart"] == ["always"]
    assert service["User"] == ["orbweaver"], "never root: task code runs as the worker's user"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert "Environment" not in service, "settings come from the files, secrets never inline"

    # Variables from the environment files, in order; the secret files define only secrets.
    env: dict[str, str] = {}
    secret_vars: set[str] = set()
    for installed in service["EnvironmentFile"]:
        values = read_env_file(shipped(installed))
        if set(values) & ALL_SECRETS:
            assert set(values) <= ALL_SECRETS, f"{installed} mixes secrets and settings"
            assert shipped(installed).name.endswith(".example"), "no secret is shipped"
            secret_vars |= set(values)
            values = {k: secret_values[k] for k in values}
        env.update(values)

    (exec_start,) = service["ExecStart"]
    words = shlex.split(exec_start)
    assert words[0] == "/opt/orbweaver/bin/orbweaver"
    used = {m.group(1) for w in words for m in _VAR.finditer(w)}
    assert not used & ALL_SECRETS, "a secret variable on the command line"
    missing = used - set(env)
    assert not missing, f"ExecStart uses variables no EnvironmentFile defines: {missing}"
    for word in words:
        assert "$" not in _VAR.sub("", word), f"{word!r}: only ${{NAME}} (one word) substitution"
    argv = [interpolate(w, env) for w in words[1:]]
    kind = argv[0]
    assert unit_path.name == f"orbweaver-{kind}.service"
    values = COMMANDS[kind].match(argv)
    # Exactly the secrets this service takes, none another one's (the storage's stay there).
    assert secret_vars == set(COMMANDS[kind].secrets)
    assert not any(v in " ".join(argv) for v in secret_values.values())
    config_path = values.get("config")
    config_file = shipped(config_path) if config_path else DEPLOY / "orbweaver.toml"
    secret_env = {k: v for k, v in env.items() if k in secret_vars}
    load_service_config(argv, secret_env, config_file, tmp_path)


def test_the_units_give_each_service_the_addresses_its_peers_listen_on() -> None:
    """orbweaver.env as one storage host, the scheduler host and a worker host read it: the
    storage advertises an address of its own that is in everyone's storage list, which names
    two or more storages; the workers are given the scheduler's address."""
    settings = read_env_file(SYSTEMD / "orbweaver.env")
    values: dict[str, dict[str, str]] = {}
    for unit_path in UNITS:
        (exec_start,) = read_unit(unit_path)["Service"]["ExecStart"]
        argv = [interpolate(w, settings) for w in shlex.split(exec_start)[1:]]
        values[argv[0]] = COMMANDS[argv[0]].match(argv)
    storage, scheduler, worker = values["storage"], values["scheduler"], values["worker"]

    storages = storage_list(scheduler["storage"])
    assert storage_list(worker["storage"]) == storages
    assert len(set(storages)) == len(storages) >= 2, "storage failover needs two storages"
    assert len({host_port(a)[0] for a in storages}) == len(storages), "one storage per host"
    assert storage["advertise"] in storages, "a storage advertises an address of the list"
    listen_host, listen_port = host_port(storage["listen"])
    advertise_host, advertise_port = host_port(storage["advertise"])
    assert advertise_port == listen_port
    assert listen_host in (advertise_host, *WILDCARDS), "it listens where it advertises"
    assert not is_wildcard_or_loopback(advertise_host), "peers on other hosts reach it"
    assert worker["scheduler"] == scheduler["listen"]
    assert host_port(scheduler["listen"])[0] not in WILDCARDS
    assert worker["ip"] not in {host_port(a)[0] for a in [*storages, scheduler["listen"]]}
    url = urlsplit(storage["db_url"])
    assert url.scheme == "mariadb" and url.password is None, "failover needs MariaDB"


def test_every_setting_of_the_env_file_is_used() -> None:
    settings = read_env_file(SYSTEMD / "orbweaver.env")
    used = {m.group(1) for u in UNITS for m in _VAR.finditer(u.read_text())}
    assert set(settings) == used


# ---------------------------------------------------------------------------------------------
# The image
# ---------------------------------------------------------------------------------------------


def test_the_image_is_built_by_the_script_ci_runs() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    runs = re.findall(r"^RUN (.*)$", dockerfile, re.MULTILINE)
    builds = [r for r in runs if "build-dist.sh" in r]
    assert builds == ["bash scripts/build-dist.sh /src/dist /opt/orbweaver"], runs
    assert "COPY --from=build /opt/orbweaver /opt/orbweaver" in dockerfile
    assert re.search(r'^ENTRYPOINT \["orbweaver"\]$', dockerfile, re.MULTILINE)
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^bash scripts/build-dist\.sh ", ci, re.MULTILINE), "CI runs the script"


# ---------------------------------------------------------------------------------------------
# The workflows
# ---------------------------------------------------------------------------------------------

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.stem for w in WORKFLOWS])
def test_a_workflow_is_valid_by_the_github_workflow_schema(workflow: Path) -> None:
    proc = check_jsonschema("--builtin-schema", "vendor.github-workflows", str(workflow))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_release_builds_manylinux2014_wheels_for_both_architectures_and_an_sdist() -> None:
    release = yaml.safe_load((REPO / ".github" / "workflows" / "release.yml").read_text())
    wheels = release["jobs"]["wheels"]
    assert wheels["strategy"]["matrix"]["target"] == ["x86_64", "aarch64"]
    (build,) = [s for s in wheels["steps"] if s.get("uses", "").startswith("PyO3/maturin-action")]
    assert build["with"]["manylinux"] == "2014"  # what .ci/run proves with zig and auditwheel
    assert "--release" in build["with"]["args"].split()
    sdist_steps = release["jobs"]["sdist"]["steps"]
    (sdist,) = [s for s in sdist_steps if "maturin-action" in s.get("uses", "")]
    assert sdist["with"]["command"] == "sdist"
    assert "tags" in release[True]["push"]  # YAML 1.1 reads the key `on` as True
