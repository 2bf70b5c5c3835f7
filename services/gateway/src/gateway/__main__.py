"""`python -m gateway [serve|migrate|downgrade]`."""

from gateway.app import create_app
from gateway.settings import GatewaySettings
from servicekit import cli


def main() -> None:
    """Run the gateway's command line."""
    cli.run("gateway", GatewaySettings, create_app)


if __name__ == "__main__":
    main()
