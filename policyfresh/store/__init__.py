"""Storage: settings, table definitions, Delta and SQL access, leases, locks, expectation suites."""
