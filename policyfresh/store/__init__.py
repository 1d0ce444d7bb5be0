"""Storage: settings, table definitions, Delta and SQL access, leases and locks, expectation suites."""
