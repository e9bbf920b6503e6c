//! The API's list queries (hosts, check results, check events), written once for both backends.
//! The filters, their order, the keyset pagination and the page split are shared, so both
//! backends answer a query alike; [`Dialect`] holds only what SQLite and PostgreSQL spell
//! differently. Each dialect's text is kept as it was tuned, so each planner still uses the
//! `hosts_by_hostname` index for the host order.

use super::{CheckQuery, EventQuery, FieldFilter, HostCursor, HostQuery, Liveness, ValuePattern};

/// The columns of PostgreSQL's `check_results` in the order its `check_from_row` reads them.
pub(super) const CHECK_COLUMNS: &str = "host_id, check_name, kind, target, outcome, reason, \
    since_ms, received_ms, started_ms, duration_seconds, measurements";

/// The columns of SQLite's `check_results`, which keeps the outcome of each check and target;
/// the latest run of each is in the host's `check_runs` row.
pub(super) const SQLITE_CHECK_COLUMNS: &str =
    "host_id, check_name, kind, target, outcome, reason, since_ms";

/// The columns of `agent_tokens` in the order `token_from_row` of each backend reads them.
pub(super) const TOKEN_COLUMNS: &str =
    "id, kind, host, created_ms, expires_ms, revoked_ms, last_used_ms, uses_left, issued_by";

/// The SQL spelling a query is built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    /// `?1` placeholders; case folded by `COLLATE NOCASE` (the host index's collation).
    Sqlite,
    /// `$1` placeholders with text casts; case folded by `lower()` (the host index's expression).
    Postgres,
}

impl Dialect {
    /// `column` compared without regard to (ASCII) case, as the indexes are built.
    fn folded(self, column: &str) -> String {
        match self {
            Dialect::Sqlite => format!("{column} COLLATE NOCASE"),
            Dialect::Postgres => format!("lower({column})"),
        }
    }

    /// The case-insensitive `LIKE`: SQLite's `LIKE` already ignores ASCII case.
    fn like(self) -> &'static str {
        match self {
            Dialect::Sqlite => "LIKE",
            Dialect::Postgres => "ILIKE",
        }
    }
}

/// A bound parameter; each backend converts it to its own value type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SqlArg {
    Text(String),
    Int(i64),
    Bool(bool),
}

impl From<String> for SqlArg {
    fn from(value: String) -> Self {
        SqlArg::Text(value)
    }
}

impl From<i64> for SqlArg {
    fn from(value: i64) -> Self {
        SqlArg::Int(value)
    }
}

impl From<bool> for SqlArg {
    fn from(value: bool) -> Self {
        SqlArg::Bool(value)
    }
}

/// A list query ready to run: its text, its parameters in placeholder order, and the page size
/// (the text asks for one row more, to know whether another page follows).
#[derive(Debug)]
pub(super) struct ListQuery {
    pub text: String,
    pub args: Vec<SqlArg>,
    pub limit: usize,
}

/// Builds a statement with numbered parameters, so each filter can refer to its own value.
struct SqlBuilder {
    dialect: Dialect,
    text: String,
    args: Vec<SqlArg>,
}

impl SqlBuilder {
    fn new(dialect: Dialect, text: String) -> Self {
        SqlBuilder {
            dialect,
            text,
            args: Vec::new(),
        }
    }

    /// Adds a parameter and returns its placeholder (`?3` or `$3`).
    fn bind(&mut self, value: impl Into<SqlArg>) -> String {
        self.args.push(value.into());
        match self.dialect {
            Dialect::Sqlite => format!("?{}", self.args.len()),
            Dialect::Postgres => format!("${}", self.args.len()),
        }
    }

    /// Adds a text parameter where PostgreSQL cannot infer its type (inside a row value or a
    /// function call).
    fn bind_text(&mut self, value: String) -> String {
        let placeholder = self.bind(value);
        match self.dialect {
            Dialect::Sqlite => placeholder,
            Dialect::Postgres => format!("{placeholder}::text"),
        }
    }

    fn push(&mut self, fragment: &str) {
        self.text.push_str(fragment);
    }

    /// Appends `AND column = value` for each filter given.
    fn push_equal(&mut self, filters: &[(&str, &Option<String>)]) {
        for (column, value) in filters {
            if let Some(value) = value {
                let placeholder = self.bind(value.clone());
                self.push(&format!(" AND {column} = {placeholder}"));
            }
        }
    }

    /// Appends a keyset bound on (folded hostname, id), the order of `hosts_by_hostname`:
    /// `>` for the rows after `cursor`, `<=` for the rows up to it.
    fn push_host_bound(&mut self, cursor: &HostCursor, comparison: &str) {
        let hostname_order = self.dialect.folded("hostname");
        let hostname = self.bind_text(cursor.hostname.clone());
        let id = self.bind_text(cursor.id.clone());
        let strict = comparison.trim_end_matches('=');
        self.push(&match self.dialect {
            // Spelt with OR so SQLite still bounds its scan of `hosts_by_hostname` (it does not
            // for a row value under a collation).
            Dialect::Sqlite => format!(
                " AND ({hostname_order} {strict} {hostname} \
                 OR ({hostname_order} = {hostname} AND id {comparison} {id}))"
            ),
            // The index sorts lower(hostname) bytewise ("C"), so the cursor must as well.
            Dialect::Postgres => format!(
                " AND ({hostname_order}, id) {comparison} (lower({hostname}) COLLATE \"C\", {id})"
            ),
        });
    }

    /// The condition on one `inventory_fields` row (columns prefixed by `prefix`) for `filter`.
    fn field_match(&mut self, filter: &FieldFilter, prefix: &str) -> String {
        let field = self.bind(filter.field.clone());
        let value = self.value_match(&format!("{prefix}value"), &filter.pattern);
        format!("{prefix}field = {field} AND {value}")
    }

    /// `column` compared with `pattern` as a filter compares an inventory value: exact or
    /// glob, without regard to (ASCII) case.
    fn value_match(&mut self, column: &str, pattern: &ValuePattern) -> String {
        if self.dialect == Dialect::Sqlite
            && let ValuePattern::Glob(glob) = pattern
        {
            return self.sqlite_glob_match(column, glob);
        }
        self.plain_value_match(column, pattern)
    }

    /// SQLite: `glob` as the range of `column` (under `NOCASE`, the collation of the value
    /// indexes) that holds every value it can match, from the text before its first `*`, and
    /// a `LIKE` for the rest. SQLite derives such a range from a `LIKE` itself only by looking
    /// at the bound pattern, and then prepares the statement again whenever it is bound anew;
    /// the readers turn that off (`SQLITE_DBCONFIG_ENABLE_QPSG`) and get the range from here.
    /// A glob that is a prefix and one final `*` is usually exactly its range (a text starts
    /// with the prefix if and only if it sorts between the prefix and [`prefix_upper_bound`]),
    /// so it needs no `LIKE`; a glob starting with `*` has no range, only the `LIKE`.
    fn sqlite_glob_match(&mut self, column: &str, glob: &str) -> String {
        let literal = glob.split('*').next().unwrap_or_default();
        let mut conditions = Vec::new();
        let mut exact = false;
        if !literal.is_empty() {
            let folded = literal.to_ascii_lowercase();
            let upper = prefix_upper_bound(&folded);
            let lower = self.bind(folded);
            conditions.push(format!("{column} COLLATE NOCASE >= {lower}"));
            if let Some(upper) = upper {
                // Exact only when the raised character is the last one and is not a capital
                // (`@` raised is `A`, which NOCASE reads as `a`: the range then also holds `[`).
                exact = glob.len() == literal.len() + 1
                    && upper.chars().count() == literal.chars().count()
                    && !upper.ends_with(|c: char| c.is_ascii_uppercase());
                let upper = self.bind(upper);
                conditions.push(format!("{column} COLLATE NOCASE < {upper}"));
            }
        }
        if !exact {
            conditions.push(self.plain_value_match(column, &ValuePattern::Glob(glob.to_owned())));
        }
        conditions.join(" AND ")
    }

    /// `column` compared with `pattern` by `=` or `LIKE`, as each backend spells it.
    fn plain_value_match(&mut self, column: &str, pattern: &ValuePattern) -> String {
        let (operator, pattern) = match pattern {
            ValuePattern::Exact(value) => ("=", value.clone()),
            // Both sides are folded already, so PostgreSQL's plain `LIKE` (which can read the
            // `text_pattern_ops` index) is enough.
            ValuePattern::Glob(glob) => ("LIKE", like_glob(glob)),
        };
        let pattern = self.bind_text(pattern);
        let (value, pattern) = match self.dialect {
            Dialect::Sqlite => (format!("{column} COLLATE NOCASE"), pattern),
            Dialect::Postgres => (format!("lower({column})"), format!("lower({pattern})")),
        };
        let escape = if operator == "=" { "" } else { " ESCAPE '\\'" };
        format!("{value} {operator} {pattern}{escape}")
    }

    fn finish(self, order: &str, limit: usize) -> ListQuery {
        let limit = limit.max(1);
        let mut text = self.text;
        text.push_str(&format!(" ORDER BY {order} LIMIT {}", limit + 1));
        ListQuery {
            text,
            args: self.args,
            limit,
        }
    }
}

/// The `hosts` column holding a copy of inventory `field`, when there is one.
///
/// The write path sets these columns from the same inventory whose fields it stores
/// (`apply_inventory`), so a host with `field = v` in `inventory_fields` has `v` in the column.
/// The converse does not hold (an inventory without `bios` keeps the previous columns, and empty
/// values are not stored as fields): a column match is necessary, not sufficient, so it only
/// spares the probes of the hosts it rules out. Each of these fields is single-valued text.
pub(super) fn host_column_of(field: &str) -> Option<&'static str> {
    Some(match field {
        "bios.smanufacturer" => "manufacturer",
        "bios.smodel" => "model",
        "bios.ssn" => "serial_number",
        "hardware.vmsystem" => "vmsystem",
        "hardware.chassis_type" => "chassis_type",
        "operatingsystem.name" => "os_name",
        "operatingsystem.version" => "os_version",
        "operatingsystem.full_name" => "os_full_name",
        "operatingsystem.kernel_version" => "kernel_version",
        "operatingsystem.arch" => "arch",
        "operatingsystem.fqdn" => "fqdn",
        _ => return None,
    })
}

/// How [`hosts`] applies the inventory filters. Every plan returns the same rows; they differ in
/// what the database reads, so the caller picks one from what it knows of the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HostPlan {
    /// Every inventory filter as `id IN (the hosts it matches)`, left to the database's planner.
    /// [`super::host_page::read_host_page`] uses it only for queries without inventory filters.
    Planner,
    /// Filter `driver` collects the hosts it matches (`IN`), every other filter is probed per
    /// candidate (`EXISTS`), and the candidates are sorted: cheap when the driver matches few.
    Collect { driver: usize },
    /// Hosts are walked in hostname order from the cursor, each filter probed per host
    /// (`EXISTS` on `inventory_fields_by_host_field`), until the page is full or the walk passes
    /// `until` (inclusive): cheap when the filters match many hosts, since it stops early.
    /// PostgreSQL runs it with sorts turned off, so that it reads `hosts_by_hostname`.
    Walk { until: Option<HostCursor> },
    /// [`HostPlan::Walk`] over the first `hosts` hosts after the cursor, taken in a subquery:
    /// no statement has to find the window's end first. PostgreSQL's choice: finding the end
    /// reads the table row of every host in the window (its host order is an index on an
    /// expression, which it never reads alone), as much as the walk itself.
    WalkWindow { hosts: i64 },
}

/// `GET /api/v1/hosts`: the hosts matching every filter, in case-insensitive hostname order.
/// `host_columns` is the backend's own column list (PostgreSQL has `reported_to` too).
pub(super) fn hosts(
    dialect: Dialect,
    host_columns: &str,
    query: &HostQuery,
    plan: &HostPlan,
) -> ListQuery {
    let mut sql = SqlBuilder::new(dialect, format!("SELECT {host_columns} FROM "));
    let mut order = format!("{}, id", dialect.folded("hostname"));
    if let HostPlan::WalkWindow { hosts } = plan {
        // The window in a subquery, which the planner must read first and in order (it cannot
        // move the filters into it past its `LIMIT`); its sort key is kept as a column so the
        // order carries through to the page.
        sql.push(&format!(
            "(SELECT *, {order_key} AS hostname_order FROM hosts WHERE TRUE",
            order_key = dialect.folded("hostname")
        ));
        if let Some(after) = &query.after {
            sql.push_host_bound(after, ">");
        }
        let window = sql.bind(*hosts);
        sql.push(&format!(
            " ORDER BY {order} LIMIT {window}) AS hosts WHERE TRUE"
        ));
        order = "hostname_order, id".to_owned();
    } else {
        sql.push("hosts WHERE TRUE");
        if let Some(after) = &query.after {
            sql.push_host_bound(after, ">");
        }
    }
    if let HostPlan::Walk { until: Some(until) } = plan {
        sql.push_host_bound(until, "<=");
    }
    // SQLite tests a walked host's conditions in the order they are written, so they are
    // written cheapest first: the values it reads from the host-order index (the copies of
    // inventory fields, then the substring matches), then the columns that need the table
    // row, then the searches of `inventory_fields`. With the OS substring first, the vendor
    // page tested it on every host walked and took twice as long. PostgreSQL orders a row's
    // conditions by its own cost estimates.
    let mut from_index = Vec::new();
    let mut substrings = Vec::new();
    let mut from_row = Vec::new();
    let mut searches = Vec::new();
    let like = dialect.like();
    if let Some(hostname) = &query.hostname {
        let pattern = sql.bind(like_substring(hostname));
        substrings.push(format!(
            "(hostname {like} {pattern} ESCAPE '\\' OR fqdn {like} {pattern} ESCAPE '\\')"
        ));
    }
    if let Some(os) = &query.os {
        let pattern = sql.bind(like_substring(os));
        substrings.push(format!(
            "(os_name || ' ' || os_version || ' ' || os_full_name) \
             {like} {pattern} ESCAPE '\\'"
        ));
    }
    if let Some(liveness) = query.liveness {
        let threshold = sql.bind(query.stale_before_ms);
        let comparison = match liveness {
            Liveness::Up => ">=",
            Liveness::Stale => "<",
        };
        from_row.push(format!("last_seen_ms {comparison} {threshold}"));
    }
    if let Some(conflict) = query.identity_conflict {
        let flag = sql.bind(conflict);
        from_row.push(format!("identity_conflict = {flag}"));
    }
    for (index, filter) in query.fields.iter().enumerate() {
        let collected = match plan {
            HostPlan::Planner => true,
            HostPlan::Collect { driver } => *driver == index,
            HostPlan::Walk { .. } | HostPlan::WalkWindow { .. } => false,
        };
        let substring_on_host_column = match (&filter.pattern, host_column_of(&filter.field)) {
            (ValuePattern::Glob(glob), Some(column)) if glob.starts_with('*') => Some(column),
            _ => None,
        };
        if collected
            && dialect == Dialect::Postgres
            && let Some(column) = substring_on_host_column
        {
            // A pattern starting with `*` has no index range, and PostgreSQL reads the value of
            // each of the field's rows from the table (it never reads it from its expression
            // index): a second per host for 100 000 serials. The host row's copy is a smaller
            // table to read (the candidates), and each candidate is then probed.
            let candidates = sql.value_match(column, &filter.pattern);
            let matches = sql.field_match(filter, "f.");
            sql.push(&format!(
                " AND id = ANY (ARRAY(SELECT id FROM hosts WHERE {candidates})) \
                 AND EXISTS (SELECT 1 FROM inventory_fields f \
                 WHERE f.host_id = hosts.id AND {matches} OFFSET 0)"
            ));
        } else if collected {
            let matches = sql.field_match(filter, "");
            let membership = match (dialect, plan) {
                // PostgreSQL estimates a prefix's matches from its statistics and, when they
                // say few, prefers collecting them even where walking would stop much sooner.
                // An array built from the matches is a list it cannot see into (it assumes a
                // handful of entries), so it collects: looks each host up by its key, sorts.
                (Dialect::Postgres, HostPlan::Collect { .. }) => format!(
                    "id = ANY (ARRAY(SELECT host_id FROM inventory_fields WHERE {matches}))"
                ),
                _ => format!("id IN (SELECT host_id FROM inventory_fields WHERE {matches})"),
            };
            searches.push(membership);
        } else {
            // The host row's copy first: a host whose column does not match cannot have the
            // field, so only the hosts that pass are probed in `inventory_fields`.
            if let Some(column) = host_column_of(&filter.field) {
                from_index.push(sql.value_match(column, &filter.pattern));
            }
            let matches = sql.field_match(filter, "f.");
            // `OFFSET 0` keeps PostgreSQL from turning the probe into a join, which it may
            // answer by reading every match of the filter first (the misjudged collect again):
            // it stays a search of `inventory_fields_by_host_field` per host.
            let fence = match dialect {
                Dialect::Sqlite => "",
                Dialect::Postgres => " OFFSET 0",
            };
            searches.push(format!(
                "EXISTS (SELECT 1 FROM inventory_fields f \
                 WHERE f.host_id = hosts.id AND {matches}{fence})"
            ));
        }
    }
    for condition in [from_index, substrings, from_row, searches].concat() {
        sql.push(&format!(" AND {condition}"));
    }
    sql.finish(&order, query.limit)
}

/// Counts the rows of `inventory_fields` matching `filter`, stopping at `cap`: one range of
/// `inventory_fields_by_value`, so at most `cap` index entries are read. `None` when the
/// pattern starts with a wildcard (no range to read; counting would read every value of the
/// field).
pub(super) fn count_field_matches(
    dialect: Dialect,
    filter: &FieldFilter,
    cap: i64,
) -> Option<(String, Vec<SqlArg>)> {
    if let ValuePattern::Glob(glob) = &filter.pattern
        && glob.starts_with('*')
    {
        return None;
    }
    let mut sql = SqlBuilder::new(dialect, String::new());
    let matches = sql.field_match(filter, "");
    let cap = sql.bind(cap);
    Some((
        format!(
            "SELECT count(*) FROM (SELECT 1 FROM inventory_fields WHERE {matches} LIMIT {cap}) \
             AS capped"
        ),
        sql.args,
    ))
}

/// The host `window` places after `after` in hostname order (the first host when `after` is
/// `None`), read from `hosts_by_hostname` alone; no row when fewer hosts follow.
pub(super) fn host_window_end(
    dialect: Dialect,
    after: Option<&HostCursor>,
    window: i64,
) -> (String, Vec<SqlArg>) {
    let mut sql = SqlBuilder::new(
        dialect,
        "SELECT hostname, id FROM hosts WHERE TRUE".to_owned(),
    );
    if let Some(after) = after {
        sql.push_host_bound(after, ">");
    }
    let offset = sql.bind(window.max(1) - 1);
    let order = dialect.folded("hostname");
    sql.push(&format!(" ORDER BY {order}, id LIMIT 1 OFFSET {offset}"));
    (sql.text, sql.args)
}

/// `GET /api/v1/checks`: the latest result of every check matching the filters, with the
/// host's name as the last column, in (host, check, target) order.
pub(super) fn checks(dialect: Dialect, query: &CheckQuery) -> ListQuery {
    // SQLite: the host's runs ride along; its reader picks each check's run out of them.
    let (columns, runs_column, runs_join) = match dialect {
        Dialect::Sqlite => (
            SQLITE_CHECK_COLUMNS,
            ", r.runs",
            " LEFT JOIN check_runs r ON r.host_id = c.host_id",
        ),
        Dialect::Postgres => (CHECK_COLUMNS, "", ""),
    };
    let columns: Vec<String> = columns
        .split(',')
        .map(|column| format!("c.{}", column.trim()))
        .collect();
    let mut sql = SqlBuilder::new(
        dialect,
        format!(
            "SELECT {}{runs_column}, h.hostname FROM check_results c \
             JOIN hosts h ON h.id = c.host_id{runs_join} WHERE TRUE",
            columns.join(", ")
        ),
    );
    sql.push_equal(&[
        ("c.host_id", &query.host_id),
        ("c.kind", &query.kind),
        ("c.check_name", &query.check),
        ("c.outcome", &query.outcome),
    ]);
    if let Some((host, check, target)) = &query.after {
        let (host, check, target) = (
            sql.bind_text(host.clone()),
            sql.bind_text(check.clone()),
            sql.bind_text(target.clone()),
        );
        sql.push(&format!(
            " AND (c.host_id, c.check_name, c.target) > ({host}, {check}, {target})"
        ));
    }
    sql.finish("c.host_id, c.check_name, c.target", query.limit)
}

/// `GET /api/v1/events`: check outcome changes matching the filters, newest first, with the
/// host's name as the third column.
pub(super) fn events(dialect: Dialect, query: &EventQuery) -> ListQuery {
    let mut sql = SqlBuilder::new(
        dialect,
        "SELECT e.id, e.host_id, h.hostname, e.check_name, e.kind, e.target, e.at_ms, \
         e.old_outcome, e.new_outcome, e.reason \
         FROM check_events e JOIN hosts h ON h.id = e.host_id WHERE TRUE"
            .to_owned(),
    );
    sql.push_equal(&[
        ("e.host_id", &query.host_id),
        ("e.kind", &query.kind),
        ("e.check_name", &query.check),
    ]);
    if let Some(since) = query.since_ms {
        let placeholder = sql.bind(since);
        sql.push(&format!(" AND e.at_ms >= {placeholder}"));
    }
    if let Some(before) = query.before_id {
        let placeholder = sql.bind(before);
        sql.push(&format!(" AND e.id < {placeholder}"));
    }
    sql.finish("e.id DESC", query.limit)
}

/// The rows were read with `LIMIT limit + 1`: keeps `limit` of them and, when there was one
/// more, returns the cursor of the last row kept (where the next page starts).
pub(super) fn split_page<T, C>(
    rows: &mut Vec<T>,
    limit: usize,
    cursor: impl FnOnce(&T) -> C,
) -> Option<C> {
    if rows.len() <= limit {
        return None;
    }
    rows.truncate(limit);
    rows.last().map(cursor)
}

/// A text above every text that starts with `prefix` (ASCII-lowercase) in `NOCASE` order: the
/// prefix with its last character raised by one. Folding can only raise a character (`A` to
/// `a`), so the bound holds in that order too. `None` when no character can be raised.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            _ => char::from_u32(last as u32 + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// `LIKE` pattern for a case-insensitive substring match.
pub(super) fn like_substring(text: &str) -> String {
    format!("%{}%", escape_like(text))
}

/// Turns a `*` glob into a `LIKE` pattern; everything else matches literally.
pub(super) fn like_glob(text: &str) -> String {
    escape_like(text).replace('*', "%")
}

fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FieldFilter, HostCursor};

    fn host_query() -> HostQuery {
        HostQuery {
            hostname: Some("web".to_owned()),
            liveness: Some(Liveness::Stale),
            fields: vec![FieldFilter {
                field: "os.name".to_owned(),
                pattern: ValuePattern::Glob("Debian*".to_owned()),
            }],
            after: Some(HostCursor {
                hostname: "web1".to_owned(),
                id: "h1".to_owned(),
            }),
            limit: 50,
            stale_before_ms: 1_000,
            ..HostQuery::default()
        }
    }

    #[test]
    fn each_dialect_numbers_its_placeholders_in_binding_order() {
        let sqlite = hosts(Dialect::Sqlite, "id", &host_query(), &HostPlan::Planner);
        let postgres = hosts(Dialect::Postgres, "id", &host_query(), &HostPlan::Planner);
        assert_eq!(
            postgres.args,
            [
                SqlArg::Text("web1".into()),
                SqlArg::Text("h1".into()),
                SqlArg::Text("%web%".into()),
                SqlArg::Int(1_000),
                SqlArg::Text("os.name".into()),
                SqlArg::Text("Debian%".into()),
            ]
        );
        // SQLite matches the prefix glob as its range (`sqlite_glob_match`).
        let mut with_range = postgres.args.clone();
        with_range.splice(
            5..6,
            [SqlArg::Text("debian".into()), SqlArg::Text("debiao".into())],
        );
        assert_eq!(sqlite.args, with_range);
        for n in 1..=7 {
            assert!(sqlite.text.contains(&format!("?{n}")), "{}", sqlite.text);
        }
        for n in 1..=6 {
            assert!(
                postgres.text.contains(&format!("${n}")),
                "{}",
                postgres.text
            );
        }
        assert!(
            sqlite
                .text
                .ends_with("ORDER BY hostname COLLATE NOCASE, id LIMIT 51")
        );
        assert!(
            postgres
                .text
                .ends_with("ORDER BY lower(hostname), id LIMIT 51")
        );
        assert_eq!(sqlite.limit, 50);
    }

    #[test]
    fn a_walked_host_is_tested_on_its_index_values_first_and_searched_last() {
        let query = HostQuery {
            os: Some("Debian".to_owned()),
            identity_conflict: Some(false),
            fields: vec![FieldFilter {
                field: "bios.smanufacturer".to_owned(),
                pattern: ValuePattern::Glob("Dell*".to_owned()),
            }],
            ..host_query()
        };
        let walk = hosts(
            Dialect::Sqlite,
            "id",
            &query,
            &HostPlan::Walk { until: None },
        );
        let position = |fragment: &str| {
            walk.text
                .find(fragment)
                .unwrap_or_else(|| panic!("no `{fragment}` in {}", walk.text))
        };
        // The vendor's copy, read from the host order; the substrings, also read from it; the
        // columns only the table row has; the search of `inventory_fields`.
        let order = [
            position("manufacturer COLLATE NOCASE >="),
            position("hostname LIKE"),
            position("os_name || ' '"),
            position("last_seen_ms <"),
            position("identity_conflict ="),
            position("EXISTS (SELECT 1 FROM inventory_fields f"),
        ];
        assert!(order.is_sorted(), "{order:?} in {}", walk.text);
    }

    #[test]
    fn a_counted_window_holds_the_cursor_and_the_page_keeps_its_order() {
        let query = host_query();
        let ListQuery { text, args, .. } = hosts(
            Dialect::Postgres,
            "id",
            &query,
            &HostPlan::WalkWindow { hosts: 300 },
        );
        // The cursor and the window's size bound the subquery; the filters apply outside it.
        assert!(
            text.starts_with(
                "SELECT id FROM (SELECT *, lower(hostname) AS hostname_order FROM hosts \
                 WHERE TRUE AND (lower(hostname), id) > (lower($1::text) COLLATE \"C\", $2::text) \
                 ORDER BY lower(hostname), id LIMIT $3) AS hosts WHERE TRUE"
            ),
            "{text}"
        );
        assert_eq!(
            args[..3],
            [
                SqlArg::Text("web1".into()),
                SqlArg::Text("h1".into()),
                SqlArg::Int(300),
            ]
        );
        // Every inventory filter is probed, never collected.
        assert!(
            text.contains("EXISTS (SELECT 1 FROM inventory_fields f"),
            "{text}"
        );
        assert!(!text.contains(" IN (SELECT"), "{text}");
        assert!(
            text.ends_with("ORDER BY hostname_order, id LIMIT 51"),
            "{text}"
        );
    }

    #[test]
    fn a_page_keeps_the_limit_and_points_at_its_last_row() {
        let mut rows = vec![1, 2, 3];
        assert_eq!(split_page(&mut rows, 2, |row| *row), Some(2));
        assert_eq!(rows, [1, 2]);
        let mut rows = vec![1, 2];
        assert_eq!(split_page(&mut rows, 2, |row| *row), None);
        assert_eq!(rows, [1, 2]);
    }

    #[test]
    fn a_prefix_bound_sits_above_every_text_with_that_prefix() {
        assert_eq!(prefix_upper_bound("dell").as_deref(), Some("delm"));
        assert_eq!(prefix_upper_bound("hp ").as_deref(), Some("hp!"));
        assert_eq!(
            prefix_upper_bound("z\u{D7FF}").as_deref(),
            Some("z\u{E000}")
        );
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
        // In byte order (which NOCASE keeps, after folding ASCII), the bound is above the
        // longest text with the prefix and not above the prefix itself.
        let bound = prefix_upper_bound("dell").unwrap();
        assert!("dell\u{10FFFF}\u{10FFFF}".as_bytes() < bound.as_bytes());
        assert!("dell".as_bytes() < bound.as_bytes());
    }

    #[test]
    fn a_glob_with_a_literal_start_reads_only_its_range_in_sqlite() {
        let filter = |pattern: &str| FieldFilter {
            field: "bios.smanufacturer".to_owned(),
            pattern: ValuePattern::Glob(pattern.to_owned()),
        };
        let mut sql = SqlBuilder::new(Dialect::Sqlite, String::new());
        let condition = sql.field_match(&filter("Dell*Inc*"), "f.");
        assert_eq!(
            condition,
            "f.field = ?1 AND f.value COLLATE NOCASE >= ?2 AND f.value COLLATE NOCASE < ?3 \
             AND f.value COLLATE NOCASE LIKE ?4 ESCAPE '\\'"
        );
        assert_eq!(
            sql.args[1..3],
            [SqlArg::Text("dell".into()), SqlArg::Text("delm".into())]
        );
        // A prefix alone is its range.
        let mut sql = SqlBuilder::new(Dialect::Sqlite, String::new());
        assert_eq!(
            sql.field_match(&filter("Dell*"), ""),
            "field = ?1 AND value COLLATE NOCASE >= ?2 AND value COLLATE NOCASE < ?3"
        );
        // No literal start, no range; PostgreSQL reads its own range from the pattern.
        let mut sql = SqlBuilder::new(Dialect::Sqlite, String::new());
        assert!(!sql.field_match(&filter("*dell*"), "").contains(">="));
        let mut sql = SqlBuilder::new(Dialect::Postgres, String::new());
        assert!(!sql.field_match(&filter("Dell*"), "").contains(">="));
    }

    #[test]
    fn like_patterns_escape_their_wildcards() {
        assert_eq!(like_substring("50%_off\\"), "%50\\%\\_off\\\\%");
        assert_eq!(like_glob("srv-*_a"), "srv-%\\_a");
    }
}
