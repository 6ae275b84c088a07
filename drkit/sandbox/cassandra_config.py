"""Toolchain and configuration for the Cassandra sandbox (see :mod:`drkit.sandbox.cassandra`).

- :func:`find_java` / :func:`ensure_cassandra`: a Java 17 runtime, and Cassandra's jars — an
  operator's install directory (``cassandra_home=`` or ``$DRKIT_CASSANDRA_HOME``) or
  ``cassandra-all`` plus its runtime dependencies copied by Maven from
  ``drkit/sandbox/java/cassandra/pom.xml`` into ``$DRKIT_CACHE/cassandra-<version>/lib``;
- :func:`server_argv` / :func:`nodetool_argv`: the JVM command lines, with the JPMS flags of
  Cassandra 5.0's ``conf/jvm17-server.options`` / ``jvm17-clients.options``;
- :func:`render_yaml` / :data:`LOGBACK_XML`: the generated ``cassandra.yaml`` (none ships in the
  jar) and logback configuration;
- :class:`CassandraNode` (one node's addresses, ports, directories, process) and small helpers.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import shlex
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from drkit.sandbox import SandboxError
from drkit.sandbox.ports import free_port, port_is_free
from drkit.sandbox.procs import log_tail, pid_alive
from drkit.sandbox.s3 import cache_dir

_STATUS_LINE = re.compile(r"^([UD][NLJM])\s+(\S+)\s", re.M)
POM = Path(__file__).resolve().parent / "java" / "cassandra" / "pom.xml"
MAVEN_TIMEOUT = 1800.0
_INSTALL_JAVA = "install a Java 17 runtime (apt-get install openjdk-17-jre-headless) or set JAVA_HOME"


# --------------------------------------------------------------------------------------------
# Java, Maven, jars


@functools.lru_cache(maxsize=1)
def cassandra_version() -> str:
    """The Cassandra version the committed pom.xml pins (``<cassandra.version>``)."""
    match = re.search(r"<cassandra\.version>\s*([^<\s]+)\s*</cassandra\.version>", _pom_text())
    if not match:
        raise SandboxError(f"{POM} names no <cassandra.version>")
    return match.group(1)


def _pom_text() -> str:
    try:
        return POM.read_text()
    except OSError as exc:
        raise SandboxError(f"cannot read Cassandra's pom.xml ({POM}): {exc}; reinstall drkit") from None


@functools.lru_cache(maxsize=4)
def _java_major(java: str) -> int:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"cannot run {java} -version ({exc}); {_INSTALL_JAVA}") from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise SandboxError(f"cannot tell the version of {java}: {(out.stderr or out.stdout).strip()[:200]}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> str:
    """``$JAVA_HOME/bin/java``, else ``java`` on PATH, else Debian's Java 17; must be 11 or 17.

    Cassandra 5.0 runs on Java 11 and 17 (17 recommended); later releases are refused by it.
    """
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    if shutil.which("java"):
        candidates.append(str(shutil.which("java")))
    candidates += sorted(str(p) for p in Path("/usr/lib/jvm").glob("java-17-openjdk*/bin/java"))
    found = [c for c in candidates if os.access(c, os.X_OK)]
    if not found:
        raise SandboxError(f"Cassandra needs Java and none was found: {_INSTALL_JAVA}")
    for java in found:
        if _java_major(java) in (11, 17):
            return java
    versions = ", ".join(f"{j} is {_java_major(j)}" for j in found)
    raise SandboxError(f"Cassandra 5.0 runs on Java 17 (or 11), but {versions}: {_INSTALL_JAVA}")


def _cassandra_home(cassandra_home: str | os.PathLike[str] | None) -> Path | None:
    home = cassandra_home or os.environ.get("DRKIT_CASSANDRA_HOME")
    return Path(home).resolve() if home else None


def lib_cache_dir() -> Path:
    """``$DRKIT_CACHE/cassandra-<version>``: pom.xml, ``lib/`` (the jars) and a marker file."""
    return cache_dir() / f"cassandra-{cassandra_version()}"


def ensure_cassandra(cassandra_home: str | os.PathLike[str] | None = None) -> Path:
    """Return the directory of Cassandra's jars (the classpath), fetching them if needed.

    With ``cassandra_home`` (or ``$DRKIT_CASSANDRA_HOME``) that install's ``lib/`` is used as it
    is.  Otherwise ``mvn dependency:copy-dependencies`` runs on a copy of the committed pom.xml
    in ``$DRKIT_CACHE/cassandra-<version>/`` (Maven's local repository in
    ``$DRKIT_CACHE/maven-repo``); a marker with the pom's SHA-256 makes later calls return at
    once.  Concurrent callers wait for each other (a lock file).
    """
    home = _cassandra_home(cassandra_home)
    if home is not None:
        lib = home / "lib"
        if not any(lib.glob("*cassandra*.jar")):
            raise SandboxError(f"{home} is not a Cassandra install directory: no lib/*cassandra*.jar")
        return lib
    pom = _pom_text()
    digest = hashlib.sha256(pom.encode()).hexdigest()
    root = lib_cache_dir()
    lib, marker = root / "lib", root / ".pom-sha256"
    if _complete(marker, digest, lib):
        return lib
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(marker, digest, lib):
            return lib
        _maven_copy(root, pom, lib)
        marker.write_text(digest + "\n")
    return lib


def _complete(marker: Path, digest: str, lib: Path) -> bool:
    try:
        return marker.read_text().strip() == digest and any(lib.glob("cassandra-all-*.jar"))
    except OSError:
        return False


def _maven_copy(root: Path, pom: str, lib: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise SandboxError(
            "cannot fetch Cassandra's jars: no `mvn` on PATH; install Maven (apt-get install maven) "
            "or point DRKIT_CASSANDRA_HOME at a Cassandra install directory"
        )
    java = find_java()
    (root / "pom.xml").write_text(pom)
    tmp = root / "lib.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    env = {**os.environ, "JAVA_HOME": str(Path(java).resolve().parent.parent)}
    argv = [mvn, "-B", "-q", "-f", str(root / "pom.xml"), f"-Dmaven.repo.local={cache_dir() / 'maven-repo'}",
            "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"]
    try:
        res = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=MAVEN_TIMEOUT,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SandboxError(f"Maven did not fetch Cassandra's jars within {MAVEN_TIMEOUT:.0f} s") from None
    if res.returncode != 0 or not any(tmp.glob("cassandra-all-*.jar")):
        tail = "\n".join((res.stdout + res.stderr).splitlines()[-30:])
        raise SandboxError(f"`mvn dependency:copy-dependencies` for cassandra-all failed:\n{tail}")
    shutil.rmtree(lib, ignore_errors=True)
    tmp.rename(lib)


def find_nodetool_script(cassandra_home: str | os.PathLike[str] | None = None) -> Path | None:
    """An operator install's ``bin/nodetool``, if there is one (else nodetool runs from the jars)."""
    home = _cassandra_home(cassandra_home)
    script = home / "bin" / "nodetool" if home else None
    return script if script is not None and os.access(script, os.X_OK) else None


# --------------------------------------------------------------------------------------------
# Command lines

# From Cassandra 5.0's conf/jvm17-server.options (JPMS section): what Cassandra needs opened.
_JPMS_SERVER = [
    "-Djdk.attach.allowAttachSelf=true",
    *(f"--add-exports={m}=ALL-UNNAMED" for m in (
        "java.base/jdk.internal.misc", "java.management.rmi/com.sun.jmx.remote.internal.rmi",
        "java.rmi/sun.rmi.registry", "java.rmi/sun.rmi.server", "java.sql/java.sql",
        "java.base/java.lang.ref", "jdk.unsupported/sun.misc", "jdk.compiler/com.sun.tools.javac.file",
        "jdk.attach/sun.tools.attach")),
    *(f"--add-opens={m}=ALL-UNNAMED" for m in (
        "java.base/java.lang.module", "java.base/jdk.internal.loader", "java.base/jdk.internal.ref",
        "java.base/jdk.internal.reflect", "java.base/jdk.internal.math", "java.base/jdk.internal.module",
        "java.base/jdk.internal.util.jar", "jdk.management/com.sun.management.internal",
        "java.base/sun.nio.ch", "java.base/java.io", "java.base/java.lang.reflect",
        "jdk.compiler/com.sun.tools.javac", "java.base/java.lang", "java.base/java.util")),
    # Netty options of the same file
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
]

# From conf/jvm17-clients.options: what nodetool needs.
_JPMS_CLIENT = [
    "-Djdk.attach.allowAttachSelf=true",
    *(f"--add-exports={m}=ALL-UNNAMED" for m in (
        "java.base/jdk.internal.misc", "java.base/jdk.internal.ref", "java.base/sun.nio.ch",
        "java.management.rmi/com.sun.jmx.remote.internal.rmi", "java.rmi/sun.rmi.registry",
        "java.rmi/sun.rmi.server", "java.sql/java.sql", "jdk.unsupported/sun.misc")),
    *(f"--add-opens={m}=ALL-UNNAMED" for m in (
        "java.base/java.lang.module", "java.base/jdk.internal.loader", "java.base/jdk.internal.ref",
        "java.base/jdk.internal.reflect", "java.base/sun.nio.ch", "java.base/java.io",
        "java.base/java.util.concurrent", "java.base/java.util", "java.base/java.lang",
        "java.base/java.math", "java.base/java.lang.reflect", "java.base/java.net")),
]

# jvm-server.options / jvm17-server.options, less what does not suit a small shared machine:
# no -XX:+AlwaysPreTouch (it would fault in the whole heap at start), no -XX:G1HeapRegionSize=16m
# (a 512 MiB heap would have 32 regions), no heap dump on OOM (exit instead).
_SERVER_FLAGS = [
    "-Xss256k", "-ea", "-da:net.openhft...", "-XX:+UseThreadPriorities", "-XX:+ExitOnOutOfMemoryError",
    "-XX:+UseTLAB", "-XX:+ResizeTLAB", "-XX:+PerfDisableSharedMem", "-Djava.net.preferIPv4Stack=true",
    "-XX:+UseG1GC", "-XX:+ParallelRefProcEnabled", "-XX:MaxTenuringThreshold=1",
    "-XX:G1RSetUpdatingPauseTimePercent=5", "-XX:MaxGCPauseMillis=300", "-XX:InitiatingHeapOccupancyPercent=70",
    "-XX:ConcGCThreads=1",
]


def classpath(lib: Path, conf_dir: Path | None = None) -> str:
    """``conf_dir`` first (commitlog_archiving.properties is read from the classpath), then lib/*."""
    parts = [str(conf_dir)] if conf_dir else []
    return os.pathsep.join([*parts, str(lib / "*")])


def server_argv(java: str, lib: Path, *, node_dir: Path, conf_dir: Path, log_dir: Path, jmx_port: int,
                heap_mb: int, extra_jvm: Sequence[str] = ()) -> list[str]:
    """The command line of one Cassandra node (``CassandraDaemon`` in the foreground)."""
    argv = [java, f"-Xms{heap_mb}m", f"-Xmx{heap_mb}m", *_SERVER_FLAGS, *_JPMS_SERVER]
    jamm = sorted(lib.glob("jamm-*.jar"))
    if jamm:  # as cassandra.in.sh does: jamm measures object sizes through the agent
        argv.append(f"-javaagent:{jamm[-1]}")
    sigar = lib / "sigar-bin"
    if sigar.is_dir():  # an install directory's native libraries
        argv.append(f"-Djava.library.path={sigar}")
    argv += [
        "-Dcassandra-foreground=yes",
        f"-Dcassandra.config={(conf_dir / 'cassandra.yaml').as_uri()}",
        f"-Dlogback.configurationFile={(conf_dir / 'logback.xml').as_uri()}",
        f"-Dcassandra.storagedir={node_dir}",
        f"-Dcassandra.logdir={log_dir}",
        f"-Dcassandra.jmx.local.port={jmx_port}",  # JMX on 127.0.0.1 only, as cassandra-env.sh's LOCAL_JMX
        f"-Dcom.sun.management.jmxremote.rmi.port={jmx_port}",  # RMI server on that port too, not a random one
        "-Dcom.sun.management.jmxremote.authenticate=false",
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",  # no fixed ~8 s wait before CQL opens
        "-Dcassandra.shutdown_announce_in_ms=500",  # not 2 s: peers are on loopback
        *extra_jvm,
        "-cp", classpath(lib, conf_dir),
        "org.apache.cassandra.service.CassandraDaemon",
    ]
    return argv


def nodetool_argv(java: str, lib: Path, *, jmx_port: int, storage_dir: Path,
                  nodetool_script: Path | None = None) -> list[str]:
    """nodetool against one node's JMX port on 127.0.0.1 (arguments follow)."""
    if nodetool_script is not None:
        return [str(nodetool_script), "-h", "127.0.0.1", "-p", str(jmx_port)]
    tools_logback = storage_dir / "conf" / "logback-tools.xml"
    return [
        java, "-Xmx128m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto", *_JPMS_CLIENT,
        f"-Dlogback.configurationFile={tools_logback.as_uri()}", f"-Dcassandra.storagedir={storage_dir}",
        "-cp", classpath(lib), "org.apache.cassandra.tools.NodeTool", "-h", "127.0.0.1", "-p", str(jmx_port),
    ]


# --------------------------------------------------------------------------------------------
# Configuration files

LOGBACK_XML = """\
<!-- drkit sandbox: Cassandra's log to stdout, which the sandbox writes to logs/system.log -->
<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <logger name="org.apache.cassandra" level="INFO"/>
  <root level="INFO"><appender-ref ref="STDOUT"/></root>
</configuration>
"""

LOGBACK_TOOLS_XML = """\
<configuration scan="false">
  <appender name="STDERR" class="ch.qos.logback.core.ConsoleAppender">
    <target>System.err</target>
    <encoder><pattern>%-5level %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="STDERR"/></root>
</configuration>
"""


def render_yaml(*, cluster_name: str, host: str, seeds: Sequence[str], storage_port: int, native_port: int,
                initial_token: int, data_dirs: Sequence[Path], commitlog_dir: Path, saved_caches_dir: Path,
                hints_dir: Path, cdc_raw_dir: Path, overrides: Mapping[str, Any] | None = None) -> str:
    """A cassandra.yaml for one node; ``overrides`` are applied last (a key set to None is removed).

    Small memtables and caches, one token per node (``initial_token``), no bootstrap streaming
    (a new, empty ring), CDC off; commit log archiving comes from commitlog_archiving.properties.
    """
    conf: dict[str, Any] = {
        "cluster_name": cluster_name,
        "num_tokens": 1,
        "initial_token": str(initial_token),
        "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
        "endpoint_snitch": "SimpleSnitch",
        "seed_provider": [{
            "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
            "parameters": [{"seeds": ",".join(f"{s}:{storage_port}" for s in seeds)}],
        }],
        "listen_address": host,
        "rpc_address": host,
        "storage_port": storage_port,
        "native_transport_port": native_port,
        "start_native_transport": True,
        "auto_bootstrap": False,
        "data_file_directories": [str(d) for d in data_dirs],
        "commitlog_directory": str(commitlog_dir),
        "saved_caches_directory": str(saved_caches_dir),
        "hints_directory": str(hints_dir),
        "cdc_raw_directory": str(cdc_raw_dir),
        "cdc_enabled": False,
        "disk_failure_policy": "stop",  # as the shipped cassandra.yaml (the built-in default is ignore)
        "commitlog_sync": "periodic",
        "commitlog_sync_period": "10000ms",
        "commitlog_segment_size": "8MiB",
        "memtable_heap_space": "64MiB",
        "memtable_offheap_space": "64MiB",
        "file_cache_size": "32MiB",
        "key_cache_size": "8MiB",
        "concurrent_reads": 4,
        "concurrent_writes": 4,
        "concurrent_counter_writes": 4,
        "concurrent_compactors": 1,
        "native_transport_max_threads": 16,
    }
    for key, value in (overrides or {}).items():
        if value is None:
            conf.pop(key, None)
        else:
            conf[key] = value
    return "# generated by drkit.sandbox.cassandra\n" + yaml.safe_dump(conf, sort_keys=False)


def render_properties(props: Mapping[str, str]) -> str:
    """A Java .properties file (commitlog_archiving.properties), values escaped."""
    def esc(text: str) -> str:
        return text.replace("\\", "\\\\").replace("\n", "\\n").replace("=", "\\=").replace(":", "\\:")

    return "".join(f"{esc(k)}={esc(str(v))}\n" for k, v in props.items())


# --------------------------------------------------------------------------------------------
# Nodes and small helpers


@dataclass
class CassandraNode:
    """One node: its addresses, ports, directories (as named in cassandra.yaml) and process."""

    index: int
    name: str
    host: str
    native_port: int
    storage_port: int
    jmx_port: int
    initial_token: int
    node_dir: Path
    config_path: Path
    data_file_directories: list[Path]
    commitlog_directory: Path
    saved_caches_directory: Path
    hints_directory: Path
    cdc_raw_directory: Path
    log_path: Path
    nodetool_path: Path
    pid: int | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def conf_dir(self) -> Path:
        return self.config_path.parent

    def alive(self) -> bool:
        if self.proc is not None:  # ours: poll() (also reaps); /proc may still show the fork
            return self.proc.poll() is None
        return self.pid is not None and pid_alive(self.pid) and is_node_process(self.pid, self.config_path)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)


def parse_status(text: str) -> dict[str, str]:
    """{address: state} from ``nodetool status`` output (ports, if printed, are dropped)."""
    return {addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr: state
            for state, addr in _STATUS_LINE.findall(text)}


def is_node_process(pid: int, config_path: Path) -> bool:
    """The process is the node whose cassandra.yaml is ``config_path`` (guards against pid reuse)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return f"-Dcassandra.config={config_path.as_uri()}".encode() in fh.read()
    except OSError:
        return False


def tool_env(java: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
           "JAVA_HOME": str(Path(java).resolve().parent.parent), "HOME": os.environ.get("HOME", "/root")}
    return env


def common_port(hosts: Sequence[str], taken: set[int]) -> int:
    """A port free on every host (the nodes' native or storage port)."""
    for _ in range(100):
        port = free_port(hosts[0])
        if port not in taken and all(port_is_free(port, h) for h in hosts):
            return port
    raise SandboxError(f"no port free on all of {list(hosts)}")


def check_loopback(hosts: Sequence[str]) -> None:
    for host in hosts:
        try:
            with socket.socket() as s:
                s.bind((host, 0))
        except OSError as exc:
            raise SandboxError(f"cannot bind {host} ({exc}): the ring needs the loopback aliases "
                               "127.0.0.1-127.0.0.N (Linux routes 127.0.0.0/8 to lo by default)") from None


def write_script(path: Path, argv: Sequence[str], comment: str) -> None:
    path.write_text(f"#!/bin/sh\n# {comment}\nexec {' '.join(shlex.quote(a) for a in argv)} \"$@\"\n")
    path.chmod(0o755)


def ring_token(i: int, n: int) -> int:
    """Evenly spaced Murmur3 tokens: node i of n."""
    return -(2**63) + i * (2**64 // n)
