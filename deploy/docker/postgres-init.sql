-- Runs once, when the postgres container initialises an empty data directory
-- (docker-entrypoint-initdb.d). One application role, one database per service.
CREATE ROLE realstaging LOGIN PASSWORD 'realstaging';

CREATE DATABASE realstaging_gateway OWNER realstaging;
CREATE DATABASE realstaging_projects OWNER realstaging;
CREATE DATABASE realstaging_staging OWNER realstaging;
CREATE DATABASE realstaging_billing OWNER realstaging;
