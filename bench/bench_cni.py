"""Benchmark: CNI ADD+DEL of 50 pods, leasewire against the reference plugins.

leasewire runs as a runtime runs it: the installed shim, a node daemon
subprocess and an ipamd subprocess on SQLite, with the bridge driver. The
reference is Debian's Go ``bridge`` plugin with ``host-local`` IPAM from
/usr/lib/cni, on the same machine in the same run. Both wire the same 50
network namespaces, one pod at a time and 8 at a time.

leasewire's time is split by stage from the timings that the node daemon
returns (``LEASEWIRE_SHIM_TIMINGS=1``): ipamd requests, netlink work of the
drivers, the rest of the daemon, and the shim (process start and its socket
round trip outside the daemon). The shim's start is also compared with
``python3 -I -S -c pass``.

Run as root: ``.venv/bin/python bench/bench_cni.py [--pods 50] [--write-docs]``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from leasewire.cni.install import install  # noqa: E402

LEASEWIRE = Path(sys.executable).with_name("leasewire")
REFERENCE_DIR = Path("/usr/lib/cni")
DOCS = REPO / "docs" / "benchmarks.md"
SECTION = "## CNI ADD/DEL"
# Line that ends the generated part of the section; --write-docs keeps the
# hand-written analysis that follows it.
END_OF_OUTPUT = "<!-- end of bench_cni.py output -->"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within 30 s")
        time.sleep(0.1)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=1):
            return True
    except OSError:
        return False


class Runner:
    """Execs one CNI plugin with a fixed configuration, as a runtime does."""

    def __init__(self, executable: Path, config: dict[str, object], cni_path: str) -> None:
        self.executable = executable
        self.config = json.dumps(config)
        self.cni_path = cni_path

    def call(self, command: str, container_id: str, netns: str) -> tuple[float, str]:
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": "eth0",
            "CNI_ARGS": "",
            "CNI_PATH": self.cni_path,
            "LEASEWIRE_SHIM_TIMINGS": "1",
        }
        start = time.perf_counter()
        completed = subprocess.run(
            [str(self.executable)],
            input=self.config,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.perf_counter() - start
        if completed.returncode != 0:
            raise RuntimeError(
                f"{self.executable.name} {command} {container_id} failed: "
                f"{completed.stdout} {completed.stderr}"
            )
        return elapsed, completed.stderr


def run_pods(runner: Runner, pods: list[tuple[str, str]], parallel: int) -> dict[str, object]:
    """ADD then DEL every pod, ``parallel`` at a time; return wall time and stage sums."""
    stages: dict[str, float] = defaultdict(float)
    calls: list[float] = []

    def one(pod: tuple[str, str], command: str) -> None:
        elapsed, stderr = runner.call(command, *pod)
        calls.append(elapsed)
        for line in stderr.splitlines():
            if line.startswith("leasewire-timings "):
                timings = json.loads(line.split(" ", 1)[1])
                stages["ipamd"] += timings.get("ipamd", 0.0)
                stages["netlink"] += timings.get("netlink", 0.0)
                stages["daemon"] += timings.get("total", 0.0)
                stages["roundTrip"] += timings.get("shimRoundTrip", 0.0)
                stages["wall"] += elapsed

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=parallel) as executor:
        list(executor.map(lambda pod: one(pod, "ADD"), pods))
        list(executor.map(lambda pod: one(pod, "DEL"), pods))
    wall = time.perf_counter() - start
    return {"wall": wall, "stages": dict(stages), "p50": statistics.median(calls)}


def process_cpu(pid: int) -> float:
    """Return the CPU time (user and system) that process ``pid`` has used, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """Return the CPU time of this process's waited-for children (the plugins), in seconds."""
    times = os.times()
    return times.children_user + times.children_system


def time_command(argv: list[str], runs: int, env: dict[str, str]) -> float:
    """Return the median wall time of ``argv`` over ``runs`` runs, in seconds."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, input=b"{}", env=env, capture_output=True, check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_cni: run as root (it creates network namespaces)", file=sys.stderr)
        return 1

    work = Path(tempfile.mkdtemp(prefix="lwb", dir="/tmp"))
    tag = secrets.token_hex(3)
    processes: list[subprocess.Popen[bytes]] = []
    namespaces = [f"lwb{tag}{index}" for index in range(args.pods)]
    bridges = [f"lwb{tag}lw", f"lwb{tag}ref"]
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = (work / "daemons.log").open("wb")
        processes.append(
            subprocess.Popen(
                [
                    str(LEASEWIRE),
                    "--log-level",
                    "warning",
                    "ipamd",
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--database",
                    f"sqlite+aiosqlite:///{work}/ipamd.db",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        wait_for(lambda: healthy(url), "ipamd")
        node_socket = work / "node.sock"
        processes.append(
            subprocess.Popen(
                [
                    str(LEASEWIRE),
                    "--log-level",
                    "warning",
                    "node",
                    "--socket",
                    str(node_socket),
                    "--ipamd",
                    url,
                    "--cluster",
                    "bench",
                    "--node-name",
                    "bench",
                    "--state-dir",
                    str(work / "node"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        wait_for(node_socket.exists, "node daemon")
        request = urllib.request.Request(
            url + "/v1/pools",
            data=json.dumps(
                {"name": f"bench-{tag}", "cidr": "10.254.0.0/22", "gateway": "10.254.0.1"}
            ).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=10).close()
        shim, _ = install(
            bin_dir=work / "bin",
            conf_dir=work / "net.d",
            conf_name=None,
            network="bench",
            pool=f"bench-{tag}",
            driver="bridge",
            bridge=bridges[0],
            mtu=1500,
            socket_path=str(node_socket),
        )
        leasewire = Runner(
            shim,
            {
                "cniVersion": "1.0.0",
                "name": "bench",
                "type": "leasewire",
                "pool": f"bench-{tag}",
                "driver": "bridge",
                "bridge": bridges[0],
                "socket": str(node_socket),
            },
            str(work / "bin"),
        )
        reference = Runner(
            REFERENCE_DIR / "bridge",
            {
                "cniVersion": "1.0.0",
                "name": "benchref",
                "type": "bridge",
                "bridge": bridges[1],
                "isGateway": True,
                "ipam": {
                    "type": "host-local",
                    "subnet": "10.254.8.0/22",
                    "dataDir": str(work / "host-local"),
                },
            },
            str(REFERENCE_DIR),
        )

        for name in namespaces:
            subprocess.run(["ip", "netns", "add", name], check=True)
        pods = [(f"bench{tag}{i}", f"/run/netns/{name}") for i, name in enumerate(namespaces)]

        results: dict[str, dict[str, object]] = {}
        for parallel in (1, 8):
            for label, runner in (("reference", reference), ("leasewire", leasewire)):
                # One warm-up pod, so that bridge creation and first imports are not timed.
                runner.call("ADD", "warmup", pods[0][1])
                runner.call("DEL", "warmup", pods[0][1])
                daemons_before = sum(process_cpu(process.pid) for process in processes)
                plugins_before = children_cpu()
                result = run_pods(runner, pods, parallel)
                result["daemonsCpu"] = (
                    sum(process_cpu(process.pid) for process in processes) - daemons_before
                )
                result["pluginsCpu"] = children_cpu() - plugins_before
                results[f"{label}-{parallel}"] = result

        env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "VERSION"}
        # The same interpreter that the installed shim's shebang names.
        shim_python = shim.read_text().split("\n", 1)[0].removeprefix("#!").split()[0]
        python_start = time_command([shim_python, "-I", "-S", "-c", "pass"], 30, env)
        shim_start = time_command([str(shim)], 30, env)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=20)
        for name in namespaces:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        for name in bridges:
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)

    report = render(results, (shim_python, python_start), shim_start, args.pods)
    print(report)
    if args.write_docs:
        write_docs(report)
    return 0


def render(
    results: dict[str, dict[str, object]],
    python: tuple[str, float],
    shim_start: float,
    pods: int,
) -> str:
    shim_python, python_start = python
    lines = [
        SECTION,
        "",
        f"{pods} pods, each ADD then DEL, bridge driver; leasewire = installed shim + node daemon "
        "+ ipamd on SQLite; reference = Debian's Go `bridge` + `host-local` (containernetworking-"
        "plugins 1.1.1). Same machine, same run (`bench/bench_cni.py`).",
        "",
        "| mode | reference wall (s) | leasewire wall (s) | ratio | reference pods/s | "
        "leasewire pods/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for parallel in (1, 8):
        ref = float(results[f"reference-{parallel}"]["wall"])  # type: ignore[arg-type]
        ours = float(results[f"leasewire-{parallel}"]["wall"])  # type: ignore[arg-type]
        lines.append(
            f"| {parallel} at a time | {ref:.2f} | {ours:.2f} | {ours / ref:.2f}x | "
            f"{pods / ref:.1f} | {pods / ours:.1f} |"
        )
    lines += [
        "",
        "CPU time per pod (ADD and DEL), in ms: the plugin processes that the runtime execs "
        "(leasewire's shim; bridge and host-local), and leasewire's two daemons:",
        "",
        "| mode | reference plugins | leasewire shim | leasewire node daemon + ipamd |",
        "| --- | --- | --- | --- |",
    ]
    for parallel in (1, 8):
        ref_cpu = float(results[f"reference-{parallel}"]["pluginsCpu"])  # type: ignore[arg-type]
        shim_cpu = float(results[f"leasewire-{parallel}"]["pluginsCpu"])  # type: ignore[arg-type]
        daemons_cpu = float(results[f"leasewire-{parallel}"]["daemonsCpu"])  # type: ignore[arg-type]
        lines.append(
            f"| {parallel} at a time | {ref_cpu * 1000 / pods:.1f} | {shim_cpu * 1000 / pods:.1f} "
            f"| {daemons_cpu * 1000 / pods:.1f} |"
        )
    lines += ["", "leasewire time by stage, summed over all ADD and DEL calls, one at a time:", ""]
    stages = results["leasewire-1"]["stages"]
    assert isinstance(stages, dict)
    wall = stages["wall"]
    rest = stages["daemon"] - stages["ipamd"] - stages["netlink"]
    transport = stages["roundTrip"] - stages["daemon"]
    shim = wall - stages["roundTrip"]
    lines += [
        "| stage | seconds | share |",
        "| --- | --- | --- |",
        f"| shim process (exec, start, stdin, stdout) | {shim:.2f} | {shim / wall:.0%} |",
        f"| shim to node daemon (socket, HTTP) | {transport:.2f} | {transport / wall:.0%} |",
        f"| node daemon, other | {rest:.2f} | {rest / wall:.0%} |",
        f"| ipamd requests | {stages['ipamd']:.2f} | {stages['ipamd'] / wall:.0%} |",
        f"| netlink (driver) | {stages['netlink']:.2f} | {stages['netlink'] / wall:.0%} |",
        "",
        f"Shim start (VERSION, median of 30): {shim_start * 1000:.1f} ms against "
        f"{python_start * 1000:.1f} ms for `{shim_python} -I -S -c pass` "
        f"({shim_start / python_start:.2f}x).",
        "",
        END_OF_OUTPUT,
    ]
    return "\n".join(lines)


def write_docs(report: str) -> None:
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if SECTION in text and END_OF_OUTPUT in text.partition(SECTION)[2]:
        before, _, after = text.partition(SECTION)
        text = before + report + after.partition(END_OF_OUTPUT)[2]
    elif SECTION in text:
        before, _, after = text.partition(SECTION)
        # The section ends where the next "## " heading starts.
        rest = after.split("\n## ", 1)
        tail = "\n## " + rest[1] if len(rest) == 2 else ""
        text = before + report + tail
    else:
        text = text.rstrip("\n") + "\n\n" + report
    DOCS.parent.mkdir(exist_ok=True)
    DOCS.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
