"""Print setup.cfg's declared minimum versions as pip constraints, `name==version` one a line (`--torch`: torch's
alone): what .ci/run installs in its second virtual environment, where tests/test_minimum_versions.py runs.

Every requirement in `install_requires` must have a floor (`name>=version`): a declared range is tested at its lower
end. A requirement without one is an error naming it.
"""

import configparser
import re
import sys
from pathlib import Path

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"
_FLOOR = re.compile(r"(?P<name>[A-Za-z0-9_.-]+)\s*>=\s*(?P<version>[0-9][0-9A-Za-z.]*)(\s*,.*)?")


def floors(path: Path = SETUP_CFG) -> dict[str, str]:
    """{distribution name (lower case): its declared minimum version} for every requirement of `install_requires`."""
    config = configparser.ConfigParser()
    config.read(path, encoding="utf-8")
    result = {}
    for line in config["options"]["install_requires"].strip().splitlines():
        requirement = line.split(";")[0].strip()
        match = _FLOOR.fullmatch(requirement)
        if match is None:
            raise ValueError(
                f"{path}: install_requires has {requirement!r} without a minimum version; declare the lowest version "
                "the minimum-versions run (.ci/run) tests, as `name>=version`."
            )
        result[match["name"].lower()] = match["version"]
    return result


def main(argv: list[str]) -> int:
    declared = floors()
    if argv == ["--torch"]:
        print(f"torch=={declared['torch']}")
    elif not argv:
        print("\n".join(f"{name}=={version}" for name, version in declared.items()))
    else:
        print("usage: python .ci/minimum_versions.py [--torch]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
