-- FluxBilling reference schema (docs/OPERATOR.md, "Platform databases"), PostgreSQL dialect.
CREATE TABLE clients (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    phone TEXT,
    address TEXT,
    status TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'closed'))
);
CREATE TABLE users (
    id BIGINT PRIMARY KEY,
    client_id BIGINT NOT NULL REFERENCES clients(id),
    username TEXT NOT NULL,
    email TEXT NOT NULL,
    password_hash TEXT NOT NULL
);
CREATE TABLE servers (
    id BIGINT PRIMARY KEY,
    hostname TEXT,
    ip_address TEXT,
    location TEXT,
    status TEXT
);
CREATE TABLE network_ranges (
    id BIGINT PRIMARY KEY,
    cidr TEXT NOT NULL,
    server_id BIGINT REFERENCES servers(id),
    description TEXT
);
CREATE TABLE invoices (
    id BIGINT PRIMARY KEY,
    client_id BIGINT NOT NULL REFERENCES clients(id),
    amount NUMERIC(12, 2) NOT NULL,
    currency CHAR(3) NOT NULL,
    issued_at DATE NOT NULL
);
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT
);
