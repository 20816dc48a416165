package stempostgres

// ClaimSQLForTest returns the claim statement of schema, for plan tests.
func ClaimSQLForTest(schema string) string { return newQueries(schema).claim }
