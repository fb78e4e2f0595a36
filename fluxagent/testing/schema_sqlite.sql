-- FluxBilling reference schema (docs/OPERATOR.md, "Platform databases"), SQLite dialect.
CREATE TABLE clients (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    phone TEXT,
    address TEXT,
    status TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'closed'))
);
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    client_id INTEGER NOT NULL REFERENCES clients(id),
    username TEXT NOT NULL,
    email TEXT NOT NULL,
    password_hash TEXT NOT NULL
);
CREATE TABLE servers (
    id INTEGER PRIMARY KEY,
    hostname TEXT,
    ip_address TEXT,
    location TEXT,
    status TEXT
);
CREATE TABLE network_ranges (
    id INTEGER PRIMARY KEY,
    cidr TEXT NOT NULL,
    server_id INTEGER REFERENCES servers(id),
    description TEXT
);
CREATE TABLE invoices (
    id INTEGER PRIMARY KEY,
    client_id INTEGER NOT NULL REFERENCES clients(id),
    amount NUMERIC NOT NULL,
    currency TEXT NOT NULL,
    issued_at TEXT NOT NULL
);
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT
);
