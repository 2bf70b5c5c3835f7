"""`python -m staging [serve|migrate|downgrade]`."""

from servicekit.cli import run
from staging.app import create_app
from staging.settings import StagingSettings


def main() -> None:
    """Entry point of the staging service."""
    run("staging", StagingSettings, create_app)


if __name__ == "__main__":
    main()
