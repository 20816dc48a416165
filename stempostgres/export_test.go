package stempostgres

import (
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stem-go/stem/stemdriver"
)

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

// LatestVersionForTest is the version the embedded migrations reach.
func LatestVersionForTest() int { ms := migrations(); return ms[len(ms)-1].version }

// SQLUpToForTest returns SQL's statements with the migrations up to
// version only: a schema as an older stem left it.
func SQLUpToForTest(schema string, version int) string {
	qs := quoteIdent(schema)
	s := preamble(qs)
	for _, m := range migrations() {
		if m.version <= version {
			s += strings.ReplaceAll(m.sql, schemaPlaceholder, qs) +
				"INSERT INTO " + qs + ".stem_migrations (version) VALUES (" + strconv.Itoa(m.version) + ");\n"
		}
	}
	return s
}

// PoolForTest returns the shared pool of a Control opened by this package.
func PoolForTest(c stemdriver.ControlTransport) *pgxpool.Pool { return c.(*Control).s.pool }

// SetLoseReplyForTest makes each claim of b that committed fail as if its
// reply had been lost, while lose returns true.
func SetLoseReplyForTest(b *Broker, lose func() bool) { b.loseReply = lose }

// RefuseChangeListingForTest makes the server refuse rs's change listing
// statements, as a server that does not offer a function they call would
// (a real error from the server: the function does not exist).
func RefuseChangeListingForTest(rs *Revokes) {
	refused := `SELECT pg_catalog.stem_no_such_function($1::text, $2::text)`
	rs.s.q.listRevokesAt = refused
	rs.s.q.revokeChanges = `SELECT pg_catalog.stem_no_such_function($1::text, $2::text, $3::text, $4::text)`
}

// PruneSQLForTest returns the statements of Revokes.Prune of schema: the
// records' ($1 namespace, $2 tombstone retention in µs) and the
// tombstones' ($1 namespace).
func PruneSQLForTest(schema string) (records, tombstones string) {
	q := newQueries(schema)
	return q.pruneRevokes, q.pruneTombstones
}
