"""`python -m projects [serve|migrate|downgrade]`."""

from projects.app import create_app
from projects.settings import ProjectsSettings
from servicekit.cli import run


def main() -> None:
    """Entry point of the projects service."""
    run("projects", ProjectsSettings, create_app)


if __name__ == "__main__":
    main()
