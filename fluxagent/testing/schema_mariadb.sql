-- FluxBilling reference schema (docs/OPERATOR.md, "Platform databases"), MariaDB / MySQL dialect.
CREATE TABLE clients (
    id BIGINT PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    email VARCHAR(255) NOT NULL,
    phone VARCHAR(64),
    address VARCHAR(512),
    status VARCHAR(16) NOT NULL CHECK (status IN ('active', 'suspended', 'closed'))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE users (
    id BIGINT PRIMARY KEY,
    client_id BIGINT NOT NULL,
    username VARCHAR(255) NOT NULL,
    email VARCHAR(255) NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    FOREIGN KEY (client_id) REFERENCES clients(id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE servers (
    id BIGINT PRIMARY KEY,
    hostname VARCHAR(255),
    ip_address VARCHAR(64),
    location VARCHAR(255),
    status VARCHAR(32)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE network_ranges (
    id BIGINT PRIMARY KEY,
    cidr VARCHAR(64) NOT NULL,
    server_id BIGINT,
    description VARCHAR(512),
    FOREIGN KEY (server_id) REFERENCES servers(id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE invoices (
    id BIGINT PRIMARY KEY,
    client_id BIGINT NOT NULL,
    amount DECIMAL(12, 2) NOT NULL,
    currency CHAR(3) NOT NULL,
    issued_at DATE NOT NULL,
    FOREIGN KEY (client_id) REFERENCES clients(id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE settings (
    name VARCHAR(191) PRIMARY KEY,
    value TEXT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
