"""Local infrastructure and service processes of Real Staging, for `make up` and the tests."""

from devstack.infra import (
    Infra,
    S3Server,
    default_state_dir,
    drop_database,
    ensure_database,
    ensure_infra,
    ensure_postgres,
    ensure_rabbitmq,
)
from devstack.services import (
    DEFAULT_PORTS,
    SERVICES,
    PortInUseError,
    ServiceError,
    ServiceProcess,
    Stack,
    migrate,
    service_env,
)

__all__ = [
    "DEFAULT_PORTS",
    "SERVICES",
    "Infra",
    "PortInUseError",
    "S3Server",
    "ServiceError",
    "ServiceProcess",
    "Stack",
    "default_state_dir",
    "drop_database",
    "ensure_database",
    "ensure_infra",
    "ensure_postgres",
    "ensure_rabbitmq",
    "migrate",
    "service_env",
]
