"""Ray token authentication for the fleet: every connection to a cluster (``--cluster``, ``onnxsmith worker``)
presents the token in one file, and a cluster is used only when it refuses a client without that token.

The token file: ``$ONNXSMITH_RAY_TOKEN_FILE``, else ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token`` (Ray's
own default, the file ``ray start --head`` picks up). It must be a regular file owned by this user and readable by
no one else (``chmod 600``), like an ssh key. ``$RAY_AUTH_TOKEN`` (a token in the environment) is ignored and
removed for Ray: the one file decides.

``--cluster auto`` attaches only to a cluster whose Ray processes run as this user (found in ``/proc``, never by
Ray's own scan, which also finds other users' clusters), and only once the cluster has refused a client without the
token and accepted this one.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from onnxsmith.errors import UnsupportedError, UserInputError

TOKEN_FILE_ENV = "ONNXSMITH_RAY_TOKEN_FILE"
DEFAULT_TOKEN_FILE = "~/.ray/auth_token"
MAKE_TOKEN = "(umask 077; mkdir -p ~/.ray; python -c 'import secrets; print(secrets.token_hex(32))' > ~/.ray/auth_token)"
_TOKEN = re.compile(r"^[A-Za-z0-9_\-.=+/]{32,1024}$")


def token_file(path: str | os.PathLike[str] | None = None) -> Path:
    """The token file this process uses: ``path``, else the environment's, else Ray's default."""
    chosen = path or os.environ.get(TOKEN_FILE_ENV) or os.environ.get("RAY_AUTH_TOKEN_PATH") or DEFAULT_TOKEN_FILE
    return Path(chosen).expanduser()


def read_token(path: Path) -> str:
    """The token in ``path``, refused unless it is a private regular file of this user holding one token."""
    hint = f"create one with {MAKE_TOKEN} and copy it (scp, mode 600) to every machine of the fleet"
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UserInputError(f"no Ray token file at {path}", "the fleet uses Ray's token authentication", hint) from None
    except OSError as exc:
        raise UserInputError(f"cannot read the Ray token file {path}", exc.strerror or str(exc), hint) from exc
    if not stat.S_ISREG(info.st_mode):
        raise UserInputError(f"the Ray token file {path} is not a regular file", "it must hold the token", hint)
    if info.st_uid != os.getuid():
        raise UserInputError(f"the Ray token file {path} belongs to uid {info.st_uid}, not to you",
                             "a token someone else can replace is no secret of yours", f"chown it, or {hint}")
    if info.st_mode & 0o077:
        raise UserInputError(f"the Ray token file {path} is readable by others (mode {stat.S_IMODE(info.st_mode):o})",
                             "anyone who reads it can run code on every node of the fleet", f"chmod 600 {path}")
    try:
        token = path.read_text(encoding="ascii", errors="strict").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"cannot read the Ray token file {path}", str(exc)[:200], hint) from exc
    if not _TOKEN.match(token):
        raise UserInputError(f"the Ray token file {path} holds no token",
                             "expected one line of at least 32 letters, digits or -_.=+/", hint)
    return token


def ray_environment(path: Path) -> dict[str, str]:
    """The environment variables that make Ray use token authentication with the token in ``path``."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


def use_token(path: Path) -> None:
    """Make this process's Ray use token authentication with the token in ``path`` (before ``ray.init``)."""
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update(ray_environment(path))
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # an older Ray without token authentication: check_cluster refused it already
        return
    Config.initialize("")  # Ray caches its config (and the token): read the environment again
    AuthenticationTokenLoader.instance().reset_cache()


def _gcs_call(address: str, token: str | None, timeout: float) -> str:
    """'ok', 'unauthenticated' or 'unreachable: ...' for one GetClusterId call to the GCS at ``address``."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    metadata = [("authorization", f"Bearer {token}")] if token is not None else None
    with grpc.insecure_channel(address) as channel:
        try:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                return "unauthenticated"
            return f"unreachable: no answer (gRPC {exc.code().name})"
    return "ok"


def check_cluster(address: str, token: str, path: Path, timeout: float = 20.0) -> None:
    """Refuse the cluster whose GCS is at ``address`` unless it refuses a client without the token and accepts
    ``token``."""
    try:
        import ray._raylet

        ray._raylet.AuthenticationTokenLoader  # noqa: B018 - Ray 2.52+ has token authentication
    except (ImportError, AttributeError) as exc:
        raise UnsupportedError("this Ray has no token authentication", "the fleet needs Ray 2.52 or newer",
                               "pip install -U 'ray[default]'") from exc
    first = _gcs_call(address, token, timeout)
    if first.startswith("unreachable"):
        raise UnsupportedError(f"cannot reach the Ray head at {address}", first.split(": ", 1)[1],
                               "start it with the command in the README's fleet section, or check --address/--cluster")
    if first == "unauthenticated":
        raise UserInputError(f"the Ray cluster at {address} refused the token in {path}",
                             "the head was started with another token",
                             f"copy the head's token file to {path} (mode 600), or name it with ${TOKEN_FILE_ENV}")
    if _gcs_call(address, None, timeout) != "unauthenticated":
        raise UnsupportedError(f"the Ray cluster at {address} does not require a token",
                               "anyone who reaches its ports can run code on every node",
                               f"restart the head with RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={path} ray start --head "
                               "(see the README's fleet section)")


def _ray_processes() -> list[tuple[int, int, str]]:
    """(pid, owner uid, GCS address) of the Ray GCS servers and raylets visible in /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            uid = entry.stat().st_uid
        except OSError:
            continue
        name = os.path.basename(argv[0].decode(errors="replace"))
        line = " ".join(a.decode(errors="replace") for a in argv[1:])
        port = re.search(r"--gcs_server_port=(\d+)", line)
        gcs = re.search(r"--gcs[-_]address=([^\s'\"]+)", line)
        if name == "gcs_server" and port:
            host = re.search(r"--node[-_]ip[-_]address=([^\s'\"]+)", line)
            found.append((int(entry.name), uid, f"{host.group(1) if host else '127.0.0.1'}:{port.group(1)}"))
        elif name == "raylet" and gcs:
            found.append((int(entry.name), uid, gcs.group(1)))
    return found


def own_cluster() -> str:
    """``--cluster auto``: the GCS address of the one Ray cluster on this machine that runs as this user."""
    import pwd

    processes = _ray_processes()
    mine = sorted({address for _, uid, address in processes if uid == os.getuid()})
    if len(mine) == 1:
        return mine[0]
    if len(mine) > 1:
        raise UserInputError("--cluster auto found more than one Ray cluster of yours", ", ".join(mine),
                             f"name one: --cluster {mine[0]}")
    others = sorted({(address, uid) for _, uid, address in processes})
    if others:
        address, uid = others[0]
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = "?"
        raise UnsupportedError(f"--cluster auto: no Ray cluster of yours runs here; not attaching to the one at "
                               f"{address} (started by user {user}, uid {uid})",
                               "auto attaches only to a cluster this user started with this token",
                               "start your own head, or name a cluster you trust with --cluster HOST:PORT")
    raise UnsupportedError("--cluster auto: no Ray cluster runs on this machine", "no Ray head or node of yours here",
                           "start a head (see the README's fleet section), or name one with --cluster HOST:PORT")
