"""benchmarks/ as a package: each script is a module run with `python -m benchmarks.<group>.<name>`
from the checkout's root, with no `sys.path` edits of its own; benchmarks/results keeps what a
report reads (docs/benchmarks.md's cited files and the experiments' per-run records) and nothing else."""

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GROUPS = ("micro", "profiles", "experiments")


def scripts() -> list[Path]:
    return sorted(p for g in GROUPS for p in (ROOT / "benchmarks" / g).glob("*.py") if p.name != "__init__.py")


def test_every_script_is_in_a_group_and_edits_no_import_path():
    loose = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name not in ("__init__.py", "common.py"))
    assert loose == [], f"scripts outside micro/, profiles/, experiments/: {loose}"
    assert len(scripts()) >= 20
    for path in scripts():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} touches sys.path; run it as a module instead")
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] in {
                    p.stem for p in scripts()}:
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} imports a sibling by bare name: {node.module}")


def test_the_shared_helper_needs_only_the_standard_library():
    """gpu_check imports it on a machine without rlvr's dependencies, vs_trl in TRL's own venv."""
    tree = ast.parse((ROOT / "benchmarks" / "common.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "json", "os", "statistics", "subprocess", "sys", "time", "pathlib"}, imported


def test_each_tracked_result_is_cited_or_a_record_a_report_rereads():
    tracked = subprocess.run(["git", "ls-files", "benchmarks/results"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    cited_in = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    uncited = []
    for f in tracked:
        rel = Path(f).relative_to("benchmarks/results")
        if "runs" in rel.parts:
            continue  # per-run records: learning_efficiency, lr_search and preset_check re-read them
        # a file is cited by its path, by its stem (a .json and its .png), or by its folder
        names = {str(rel), str(rel.with_suffix("")) + "."} | ({f"{rel.parent}/"} if rel.parent != Path(".") else set())
        if not any(name in cited_in for name in names):
            uncited.append(f)
    assert uncited == [], f"tracked results nothing cites (docs/benchmarks.md): {uncited}"
