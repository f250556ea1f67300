"""Check the package as users install it: build the wheel, install it (not editable) into a fresh
virtual environment, and run every console script's --help and the main job from there.

    .venv/bin/python scripts/check_wheel.py        # called by scripts/test.sh

1. `pip wheel` on a clean copy of the checkout (verbose, so setuptools' warnings are visible):
   no warnings beyond the two byte-compiling notes, and the wheel holds every file of the four
   packages (git ls-files), the demo asset included, and nothing from the tests.
2. A fresh venv (no system site-packages) gets torch first, then the wheel with the
   [cpu,train,torch] extras (cpu: MLX's Linux backend) through pip's resolver, so a missing dependency shows. torch (with its own
   requirements) is the CPU build that scripts/setup.sh put in .venv, hard-linked instead of
   unpacked again: the same files as `pip install torch==2.13.0`, in seconds, never a CUDA
   build. Everything else, the package above all, comes from the wheel and pip.
3. From a folder outside the checkout: the packages import from the venv, every script in
   [project.scripts] answers --help, and `starflow-mlx-generate` with no arguments writes
   starflow.png.
Exits 1 with one line per problem.
"""

from __future__ import annotations

import concurrent.futures
import configparser
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("starflow_core", "starflow_mlx", "starflow_torch", "starflow_convert")
# setuptools notes that pip's PYTHONDONTWRITEBYTECODE causes; harmless
EXPECTED_BUILD_NOTES = re.compile(r"byte-compiling is disabled")
# pip's own notes about this machine's index configuration (not from the package)
PIP_CONFIG_NOTES = re.compile(r"Location '.*' is ignored|Looking in (indexes|links)")


def fail(problems: list[str]) -> None:
    if problems:
        print("\n".join(f"check_wheel: {problem}" for problem in problems), file=sys.stderr)
        raise SystemExit(1)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


def clean_source(target: Path) -> Path:
    """The checkout as a fresh clone would have it (tracked and new files, nothing git ignores):
    a stale build/ or *.egg-info here would otherwise put files into the wheel that a fresh
    clone's wheel lacks."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO)
    if listed.returncode != 0:
        ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__")
        return Path(shutil.copytree(REPO, target, ignore=ignore))
    for name in filter(None, listed.stdout.split("\0")):
        if (REPO / name).is_file():  # a deleted file is still listed until committed
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    return target


def build_wheel(out: Path) -> Path:
    source = clean_source(out.parent / "source")
    built = run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(out), str(source)])
    if built.returncode != 0:
        fail([f"pip wheel failed:\n{built.stdout[-3000:]}{built.stderr[-3000:]}"])
    lines = (built.stdout + built.stderr).splitlines()
    warnings = [
        line.strip()
        for line in lines
        if re.search(r"(?i)warn", line)
        and not EXPECTED_BUILD_NOTES.search(line)
        and not PIP_CONFIG_NOTES.search(line)
    ]
    fail([f"the build warns: {line}" for line in warnings])
    (wheel,) = out.glob("starflow_mlx-*.whl")
    return wheel


def package_files() -> set[str]:
    listed = run(["git", "ls-files", "--", *PACKAGES], cwd=REPO)
    if listed.returncode == 0 and listed.stdout.strip():
        return set(listed.stdout.split())
    # not a git checkout: every file of the package folders but caches
    return {
        str(path.relative_to(REPO))
        for package in PACKAGES
        for path in (REPO / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def check_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    wanted = package_files()
    problems = [f"{wheel.name} lacks {name}" for name in sorted(wanted - names)]
    extra = sorted(
        n for n in names - wanted if not n.startswith("starflow_mlx-") and "/__pycache__/" not in n
    )
    problems += [f"{wheel.name} holds {name}, which is not a package file" for name in extra]
    for folder in ("demo", "moving_digits_demo"):
        if f"starflow_core/assets/{folder}/transformer/model.safetensors" not in names:
            problems.append(f"{wheel.name} lacks the demo model starflow_core/assets/{folder}/")
    fail(problems)


def torch_and_its_requirements() -> list[importlib.metadata.Distribution]:
    """torch and everything it requires, as installed in .venv (this script runs there)."""
    found, pending = {}, ["torch"]
    while pending:
        name = pending.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found or key in ("pip", "setuptools", "wheel"):  # the venv brings its own tools
            continue
        try:
            found[key] = distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # a requirement for another platform (markers are not evaluated here)
        for requirement in distribution.requires or []:
            if "extra ==" not in requirement:
                pending.append(re.match(r"[A-Za-z0-9._-]+", requirement).group())
    return list(found.values())


def link_torch(venv: Path) -> None:
    """Hard-link torch and its own requirements from .venv into the fresh venv (the same files
    `pip install torch==2.13.0` would unpack, without the minutes of unpacking)."""
    target = next((venv / "lib").glob("python3*/site-packages"))
    for distribution in torch_and_its_requirements():
        root = Path(distribution.locate_file(""))
        top_levels = {str(file).split("/", 1)[0] for file in distribution.files or []}
        for name in sorted(top_levels):  # packages, modules and the dist-info; not ../../bin
            source = root / name
            if name.startswith(".") or (target / name).exists():
                continue
            if source.is_dir():
                shutil.copytree(source, target / name, copy_function=link_or_copy)
            elif source.is_file():
                link_or_copy(str(source), str(target / name))


def link_or_copy(source: str, target: str) -> None:
    try:
        Path(target).hardlink_to(source)
    except OSError:  # another file system
        shutil.copy2(source, target)


def console_scripts(wheel: Path) -> list[str]:
    """The [project.scripts] of pyproject.toml, as the wheel records them (entry_points.txt)."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(name).decode())
    return sorted(entry_points["console_scripts"])


def check_installed(venv: Path, place: Path, scripts: list[str]) -> None:
    python = venv / "bin" / "python"
    where = run(
        [
            str(python),
            "-c",
            "import starflow_core, starflow_mlx, starflow_torch; print(starflow_core.__file__)",
        ],
        cwd=place,
    )
    if where.returncode != 0 or str(REPO) in where.stdout:
        fail([f"the installed packages do not import from the venv: {where.stdout}{where.stderr[-2000:]}"])
    problems = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:  # each one mostly imports
        answers = pool.map(
            lambda script: run([str(venv / "bin" / script), "--help"], cwd=place, timeout=300), scripts
        )
        for script, helped in zip(scripts, answers, strict=True):
            if helped.returncode != 0 or "usage" not in helped.stdout.lower():
                problems.append(
                    f"{script} --help failed ({helped.returncode}): {helped.stderr.strip()[-500:]}"
                )
    job = run([str(venv / "bin" / "starflow-mlx-generate")], cwd=place, timeout=600)
    if job.returncode != 0 or not (place / "starflow.png").is_file():
        problems.append(
            f"starflow-mlx-generate (the main job) failed ({job.returncode}): {job.stderr[-1500:]}"
        )
    video = [str(venv / "bin" / "starflow-mlx-generate"), "3", "--model", "starflow-moving-digits-demo"]
    job = run([*video, "--quiet", "--seed", "0", "-o", "three.gif"], cwd=place, timeout=600)
    if job.returncode != 0 or not (place / "three.gif").is_file():
        problems.append(
            f"the embedded video demo failed from the wheel ({job.returncode}): {job.stderr[-1500:]}"
        )
    fail(problems)


def check_generation_only(wheel: Path, root: Path) -> None:
    """What the README promises a generation-only install: `pip install starflow-mlx[cpu]` (the
    Linux backend; a no-op extra on a Mac) brings neither torch nor mlx-data, and the main job runs
    (pyyaml comes anyway: huggingface-hub requires it)."""
    venv = root / "venv-generate"
    created = run([sys.executable, "-m", "venv", str(venv)])
    fail([f"python -m venv failed: {created.stderr}"] if created.returncode else [])
    python = str(venv / "bin" / "python")
    installed = run([python, "-m", "pip", "install", "-q", f"{wheel}[cpu]"])
    fail(
        [f"installing {wheel.name}[cpu] failed:\n{installed.stderr[-3000:]}"] if installed.returncode else []
    )
    probe = "import importlib.util as u; print([m for m in ('torch', 'mlx.data') if u.find_spec(m.split('.')[0]) and u.find_spec(m)])"
    extra = run([python, "-c", probe])
    place = root / "generate-only"
    place.mkdir()
    job = run([str(venv / "bin" / "starflow-mlx-generate"), "--quiet"], cwd=place, timeout=600)
    problems = (
        [] if extra.stdout.strip() == "[]" else [f"a generation-only install holds {extra.stdout.strip()}"]
    )
    if job.returncode != 0 or not (place / "starflow.png").is_file():
        problems.append(f"the main job failed without the extras ({job.returncode}): {job.stderr[-1500:]}")
    fail(problems)


def main() -> None:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        wheel = build_wheel(root / "dist")
        check_contents(wheel)
        built = time.perf_counter()
        venv = root / "venv"
        created = run([sys.executable, "-m", "venv", str(venv)])
        fail([f"python -m venv failed: {created.stderr}"] if created.returncode else [])
        link_torch(venv)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        installed = run([*pip, "torch==2.13.0", f"{wheel}[cpu,train,torch]"])
        fail([f"installing {wheel.name} failed:\n{installed.stderr[-3000:]}"] if installed.returncode else [])
        ready = time.perf_counter()
        place = root / "elsewhere"
        place.mkdir()
        scripts = console_scripts(wheel)
        check_installed(venv, place, scripts)
        check_generation_only(wheel, root)
    seconds = [built - start, ready - built, time.perf_counter() - ready]
    print(
        f"check_wheel: {wheel.name} holds every package file; installed in a fresh venv, "
        f"{len(scripts)} console scripts answer --help and the main job runs, also from [cpu] alone "
        f"(build {seconds[0]:.0f} s, install {seconds[1]:.0f} s, run {seconds[2]:.0f} s)"
    )


if __name__ == "__main__":
    main()
