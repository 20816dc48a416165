package stempostgres

// ClaimSQLForTest returns the claim statement of schema, for plan tests.
func ClaimSQLForTest(schema string) string { return newQueries(schema).claim }

// SettleSQLForTest returns the statements that find held rows by id
// (Extend, Ack, Release, Retry, DeadLetter) of schema, by name, for plan
// tests, with the parameters each takes (see queries).
func SettleSQLForTest(schema string) map[string]string {
	q := newQueries(schema)
	return map[string]string{"extend": q.extend, "ack": q.ack, "release": q.release, "retry": q.retry, "deadLetter": q.deadLetter}
}

// GetSQLForTest returns the statements that read results by id ($1
// namespace, $2 ids), by name, for plan tests.
func GetSQLForTest(schema string) map[string]string {
	q := newQueries(schema)
	return map[string]string{"get": q.getResults, "getFinals": q.getFinals}
}

// ClaimAfterSQLForTest returns the claim-from-a-cursor statement of schema.
func ClaimAfterSQLForTest(schema string) string { return newQueries(schema).claimAfter }
