"""`python -m billing [serve|migrate|downgrade]`."""

from billing.app import create_app
from billing.settings import BillingSettings
from servicekit.cli import run


def main() -> None:
    """Entry point of the billing service."""
    run("billing", BillingSettings, create_app)


if __name__ == "__main__":
    main()
