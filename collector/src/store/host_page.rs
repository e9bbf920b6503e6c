//! How a filtered host page is read, chosen per query for both backends: count the filters'
//! matches (reused for a few seconds), collect and sort when one filter is selective, walk the
//! hosts in hostname order with probes when every filter is broad. The backends only run the
//! statements ([`HostPageReader`]); the choice and the statements' text are shared.

use super::query::{self, Dialect, HostPlan, SqlArg};
use super::{FieldFilter, HostCursor, HostQuery, HostRecord};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a filter's count of matches is reused.
pub(super) const FILTER_COUNT_KEPT_FOR: Duration = Duration::from_secs(10);
/// Filters whose counts are kept at most; beyond, the oldest go.
pub(super) const FILTER_COUNTS_KEPT: usize = 1024;

/// The recent counts of inventory filters' matches and of the hosts ([`read_host_page`] counts each filter up
/// to a cap to choose how to read a page), so that paging through a list, or a dashboard
/// asking the same list again, counts its filters once every few seconds instead of for every
/// page: the count was a quarter of a broad filter's page. A count only chooses between ways
/// of reading that return the same rows, so one a few seconds old can make a page slower,
/// never different.
#[derive(Debug, Default)]
pub(super) struct FilterCounts {
    /// Per filter: the count, the cap it was counted up to, and when.
    recent: Mutex<HashMap<FieldFilter, (i64, i64, Instant)>>,
    /// The estimated number of hosts, and when it was estimated.
    hosts: Mutex<Option<(i64, Instant)>>,
}

impl FilterCounts {
    /// The matches of `filter` up to `cap`: a recent count when one answers that, otherwise
    /// `count()` (which counts up to `cap`), kept for the next pages.
    pub(super) fn matches<E>(
        &self,
        filter: &FieldFilter,
        cap: i64,
        now: Instant,
        count: impl FnOnce() -> Result<i64, E>,
    ) -> Result<i64, E> {
        let recent = |recent: &HashMap<FieldFilter, (i64, i64, Instant)>| {
            let &(matches, counted_to, at) = recent.get(filter)?;
            if now.saturating_duration_since(at) > FILTER_COUNT_KEPT_FOR {
                return None;
            }
            // Below its cap a count is exact; at its cap it says "at least that many".
            (matches < counted_to || cap <= counted_to).then(|| matches.min(cap))
        };
        if let Some(matches) = recent(&self.lock()) {
            return Ok(matches);
        }
        let matches = count()?;
        let mut recent = self.lock();
        if recent.len() >= FILTER_COUNTS_KEPT {
            recent
                .retain(|_, (.., at)| now.saturating_duration_since(*at) <= FILTER_COUNT_KEPT_FOR);
            if recent.len() >= FILTER_COUNTS_KEPT {
                recent.clear();
            }
        }
        recent.insert(filter.clone(), (matches, cap, now));
        Ok(matches)
    }

    /// The number of hosts: a recent estimate, otherwise `estimate()`, kept for the next pages.
    pub(super) fn hosts<E>(
        &self,
        now: Instant,
        estimate: impl FnOnce() -> Result<i64, E>,
    ) -> Result<i64, E> {
        let lock = || self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((hosts, at)) = *lock()
            && now.saturating_duration_since(at) <= FILTER_COUNT_KEPT_FOR
        {
            return Ok(hosts);
        }
        let hosts = estimate()?;
        *lock() = Some((hosts, now));
        Ok(hosts)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FieldFilter, (i64, i64, Instant)>> {
        self.recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How [`read_host_page`] answered a host query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HostPath {
    /// No inventory filter: one walk of `hosts_by_hostname`, as the planner chooses.
    Unfiltered,
    /// The most selective inventory filter collected its few matches (`HostPlan::Collect`).
    Collect,
    /// A walk in hostname order filled the page or reached the last host (`HostPlan::Walk`).
    Walk,
    /// A bounded walk did not fill the page; the rest came from collecting the matches after it.
    WalkThenCollect,
}

/// The statements [`read_host_page`] needs, run by one backend within one snapshot of its
/// database (the counts and the queries they choose see the same rows).
pub(super) trait HostPageReader {
    type Error;

    /// The spelling of the statements this reader runs.
    const DIALECT: Dialect;

    /// Whether a walk takes its window by a count of hosts ([`HostPlan::WalkWindow`]) rather
    /// than up to a window's end found first ([`HostPlan::Walk`]); the end is then looked up
    /// only when the walk did not fill the page.
    const WALKS_COUNTED_WINDOW: bool;

    /// About how many hosts the database holds. An estimate is enough: it only sets the
    /// crossover between the plans, never which rows a page holds.
    fn estimated_hosts(&mut self) -> Result<i64, Self::Error>;

    /// Runs a [`query::count_field_matches`] statement: its one number.
    fn count(&mut self, text: &str, args: Vec<SqlArg>) -> Result<i64, Self::Error>;

    /// Runs a [`query::host_window_end`] statement: the host it names, if any.
    fn window_end(
        &mut self,
        text: &str,
        args: Vec<SqlArg>,
    ) -> Result<Option<HostCursor>, Self::Error>;

    /// Runs [`query::hosts`] for `query` with `plan`.
    fn hosts(&mut self, query: &HostQuery, plan: &HostPlan)
    -> Result<Vec<HostRecord>, Self::Error>;
}

/// Reads one page of `query` (up to `limit + 1` rows, as [`query::hosts`] asks), choosing per
/// query how to apply its inventory filters.
///
/// Collecting a filter's matches then sorting them costs about one row lookup per match;
/// walking hosts in hostname order and probing each host stops after the page, so it costs
/// about `limit / selectivity` probes. With `c` matches among `n` hosts the two are even at
/// `c = sqrt((limit + 1) * n)` (the crossover): each filter with an index range (an exact value
/// or a pattern not starting with `*`) is counted up to the crossover, which reads at most that
/// many index entries, and one counted below it collects. Otherwise the walk runs over a
/// window of crossover hosts; if that does not fill the page (filters broad alone but
/// selective together, or a `*substring*` that matches few), the rest of the page is collected
/// after the window, so no query reads much more than the cheaper plan would. With only
/// `*substring*` filters the window is a quarter of the crossover.
pub(super) fn read_host_page<R: HostPageReader>(
    reader: &mut R,
    query: &HostQuery,
    filter_counts: &FilterCounts,
) -> Result<(Vec<HostRecord>, HostPath), R::Error> {
    if query.fields.is_empty() {
        let rows = reader.hosts(query, &HostPlan::Planner)?;
        return Ok((rows, HostPath::Unfiltered));
    }
    let limit = query.limit.max(1);
    let now = Instant::now();
    let hosts = filter_counts
        .hosts(now, || reader.estimated_hosts())?
        .max(0);
    let crossover = crossover(limit, hosts);

    // The filter with the fewest matches (counted up to the crossover) drives a collect.
    let mut fewest: Option<(usize, i64)> = None;
    for (index, filter) in query.fields.iter().enumerate() {
        let Some((text, args)) = query::count_field_matches(R::DIALECT, filter, crossover) else {
            continue;
        };
        let matches =
            filter_counts.matches(filter, crossover, now, || reader.count(&text, args))?;
        if fewest.is_none_or(|(_, least)| matches < least) {
            fewest = Some((index, matches));
        }
    }
    let driver = fewest.map_or(0, |(index, _)| index);
    if let Some((_, matches)) = fewest
        && matches < crossover
    {
        let rows = reader.hosts(query, &HostPlan::Collect { driver })?;
        return Ok((rows, HostPath::Collect));
    }

    // Without a counted filter (only `*substring*` patterns) the selectivity is unknown and
    // the fallback is cheap (one pass over the field's values, a fraction of a probe each), so
    // the walk gets a quarter of the window before handing over.
    let window = if fewest.is_some() {
        crossover
    } else {
        (crossover / 4).max(1)
    };
    let (text, args) = query::host_window_end(R::DIALECT, query.after.as_ref(), window);
    let (mut rows, window_end) = if R::WALKS_COUNTED_WINDOW {
        let rows = reader.hosts(query, &HostPlan::WalkWindow { hosts: window })?;
        if rows.len() > limit {
            return Ok((rows, HostPath::Walk));
        }
        (rows, reader.window_end(&text, args)?)
    } else {
        let window_end = reader.window_end(&text, args)?;
        let until = window_end.clone();
        (reader.hosts(query, &HostPlan::Walk { until })?, window_end)
    };
    let Some(window_end) = window_end else {
        // The walk reached the last host: the page is complete.
        return Ok((rows, HostPath::Walk));
    };
    if rows.len() > limit {
        return Ok((rows, HostPath::Walk));
    }
    // The window held fewer matches than a page: the rest follow the window, in order.
    let rest = HostQuery {
        after: Some(window_end),
        limit: limit - rows.len(),
        ..query.clone()
    };
    rows.extend(reader.hosts(&rest, &HostPlan::Collect { driver })?);
    Ok((rows, HostPath::WalkThenCollect))
}

/// The number of matches at which collecting and walking cost the same for a page of `limit`
/// among `hosts` hosts: `sqrt((limit + 1) * hosts)`, at least 1.
pub(super) fn crossover(limit: usize, hosts: i64) -> i64 {
    (((limit as f64 + 1.0) * hosts as f64).sqrt().ceil() as i64).max(1)
}

/// A page of `limit` hosts filtered by `(field, pattern)` pairs, as the API parses them: what
/// the backends' plan tests ask for.
#[cfg(test)]
pub(super) fn field_query(fields: &[(&str, &str)], limit: usize) -> HostQuery {
    HostQuery {
        fields: fields
            .iter()
            .map(|(field, pattern)| FieldFilter {
                field: (*field).into(),
                pattern: super::ValuePattern::parse(pattern),
            })
            .collect(),
        limit,
        ..HostQuery::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ValuePattern;

    #[test]
    fn a_filter_is_counted_again_only_when_its_count_cannot_answer() {
        let counts = FilterCounts::default();
        let dell = FieldFilter {
            field: "bios.smanufacturer".into(),
            pattern: ValuePattern::Glob("Dell*".into()),
        };
        let hpe = FieldFilter {
            pattern: ValuePattern::Glob("HP*".into()),
            ..dell.clone()
        };
        let start = Instant::now();
        let counted = std::cell::Cell::new(0);
        // A count of `matches` rows up to `cap`, as the database would answer it.
        let count = |matches: i64, cap: i64| {
            let counted = &counted;
            move || {
                counted.set(counted.get() + 1);
                Ok::<_, ()>(matches.min(cap))
            }
        };
        // Capped at 100: at least 100.
        assert_eq!(
            counts.matches(&dell, 100, start, count(5_000, 100)),
            Ok(100)
        );
        assert_eq!(
            counts.matches(&dell, 100, start, count(5_000, 100)),
            Ok(100)
        );
        assert_eq!(counts.matches(&dell, 90, start, count(5_000, 90)), Ok(90));
        assert_eq!(counted.get(), 1);
        // A higher cap than the count reached: counted again.
        assert_eq!(
            counts.matches(&dell, 200, start, count(5_000, 200)),
            Ok(200)
        );
        assert_eq!(counted.get(), 2);
        // Below its cap a count is exact for any cap.
        assert_eq!(counts.matches(&hpe, 100, start, count(7, 100)), Ok(7));
        assert_eq!(counts.matches(&hpe, 1_000, start, count(7, 1_000)), Ok(7));
        assert_eq!(counts.matches(&hpe, 3, start, count(7, 3)), Ok(3));
        assert_eq!(counted.get(), 3);
        // Too old: counted again.
        let later = start + FILTER_COUNT_KEPT_FOR + Duration::from_millis(1);
        assert_eq!(counts.matches(&hpe, 100, later, count(9, 100)), Ok(9));
        assert_eq!(counted.get(), 4);
        // A failed count is not kept.
        let failed = counts.matches(&dell, 500, start, || Err("the database went away"));
        assert_eq!(failed, Err("the database went away"));
        assert_eq!(
            counts.matches(&dell, 500, start, count(5_000, 500)),
            Ok(500)
        );
        // The number of filters kept is bounded.
        for n in 0..3 * FILTER_COUNTS_KEPT {
            let filter = FieldFilter {
                pattern: ValuePattern::Exact(format!("serial-{n}")),
                ..dell.clone()
            };
            counts
                .matches(&filter, 10, later, || Ok::<_, ()>(1))
                .unwrap();
        }
        assert!(counts.lock().len() <= FILTER_COUNTS_KEPT);
    }

    #[test]
    fn the_number_of_hosts_is_estimated_again_after_a_while() {
        let counts = FilterCounts::default();
        let start = Instant::now();
        assert_eq!(counts.hosts(start, || Ok::<_, ()>(100)), Ok(100));
        assert_eq!(counts.hosts(start, || Ok::<_, ()>(200)), Ok(100));
        assert_eq!(counts.hosts(start, || Err("unused")), Ok(100));
        let later = start + FILTER_COUNT_KEPT_FOR + Duration::from_millis(1);
        assert_eq!(
            counts.hosts(later, || Err("the database went away")),
            Err("the database went away")
        );
        assert_eq!(counts.hosts(later, || Ok::<_, ()>(300)), Ok(300));
    }

    /// A reader that answers from fixed figures and records what it was asked.
    struct FakeReader {
        matches: i64,
        /// Rows each walk returns, and whether hosts follow the window.
        walked: usize,
        hosts_after_window: bool,
        asked: Vec<String>,
    }

    impl HostPageReader for FakeReader {
        type Error = ();
        const DIALECT: Dialect = Dialect::Postgres;
        const WALKS_COUNTED_WINDOW: bool = true;

        fn estimated_hosts(&mut self) -> Result<i64, ()> {
            self.asked.push("estimate".into());
            Ok(200)
        }

        fn count(&mut self, _text: &str, _args: Vec<SqlArg>) -> Result<i64, ()> {
            self.asked.push("count".into());
            Ok(self.matches)
        }

        fn window_end(
            &mut self,
            _text: &str,
            _args: Vec<SqlArg>,
        ) -> Result<Option<HostCursor>, ()> {
            self.asked.push("window end".into());
            Ok(self.hosts_after_window.then(|| HostCursor {
                hostname: "host-031".into(),
                id: "h031".into(),
            }))
        }

        fn hosts(&mut self, query: &HostQuery, plan: &HostPlan) -> Result<Vec<HostRecord>, ()> {
            self.asked.push(format!("{plan:?} limit {}", query.limit));
            let rows = match plan {
                HostPlan::WalkWindow { .. } => self.walked,
                _ => 1,
            };
            Ok(vec![HostRecord::default(); rows])
        }
    }

    #[test]
    fn a_counted_window_looks_its_end_up_only_when_the_page_is_short() {
        let query = HostQuery {
            fields: vec![FieldFilter {
                field: "bios.smanufacturer".into(),
                pattern: ValuePattern::Glob("Dell*".into()),
            }],
            limit: 4,
            ..HostQuery::default()
        };
        let run = |matches, walked, hosts_after_window| {
            let mut reader = FakeReader {
                matches,
                walked,
                hosts_after_window,
                asked: Vec::new(),
            };
            let (rows, path) =
                read_host_page(&mut reader, &query, &FilterCounts::default()).unwrap();
            (rows.len(), path, reader.asked)
        };
        // Pages of 4 among 200 hosts: the crossover is sqrt(5 * 200) = 32 matches.
        let (rows, path, asked) = run(32, 5, true);
        assert_eq!((rows, path), (5, HostPath::Walk));
        assert_eq!(
            asked,
            ["estimate", "count", "WalkWindow { hosts: 32 } limit 4"]
        );
        // A short page: the window's end, then the rest collected after it.
        let (rows, path, asked) = run(32, 2, true);
        assert_eq!((rows, path), (3, HostPath::WalkThenCollect));
        assert_eq!(
            asked[3..],
            [
                "window end".to_owned(),
                "Collect { driver: 0 } limit 2".to_owned(),
            ]
        );
        // A short page that reached the last host is complete.
        let (rows, path, asked) = run(32, 2, false);
        assert_eq!((rows, path, asked.len()), (2, HostPath::Walk, 4));
        // Few matches: collected at once.
        let (rows, path, asked) = run(31, 5, true);
        assert_eq!((rows, path), (1, HostPath::Collect));
        assert_eq!(asked[2], "Collect { driver: 0 } limit 4");
    }

    #[test]
    fn the_crossover_is_where_both_plans_read_alike() {
        // About 3 179 for a page of 100 among 100 000 (ARCHITECTURE.md).
        assert_eq!(crossover(100, 100_000), 3_179);
        assert_eq!(crossover(4, 200), 32);
        assert_eq!(crossover(100, 0), 1);
    }
}
