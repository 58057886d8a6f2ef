from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="lookbook",
    version="0.1.0",
    description="Spark batch pipeline: fashion catalogue -> CNN classifier and visual neighbours",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    install_requires=requirements(),
    entry_points={"console_scripts": ["lookbook-synthetic=lookbook.io.synthetic:main"]},
)
