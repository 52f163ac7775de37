//! The SQL of every store operation, from `sql/*.sql`, with the schema filled in once per store.
//!
//! Each file is one statement: one round trip, one atomic step. The only things ever substituted
//! into the text are the checked, quoted schema name (`{schema}`), the notification channel
//! derived from it (`{channel}`, `[a-z0-9_]` only, see [`crate::notify::channel`]) and
//! [`NOTIFY`] (`{notify}`); every value is a bind parameter, and sqlx prepares each statement once
//! per connection.

use std::sync::Arc;

use crate::notify;
use crate::schema::Schema;

macro_rules! statements {
    ($($name:ident),* $(,)?) => {
        /// The statements of one store, for its schema.
        #[derive(Debug)]
        pub(crate) struct Statements {
            $(pub(crate) $name: Arc<str>,)*
        }

        impl Statements {
            pub(crate) fn new(schema: &Schema) -> Self {
                let quoted = schema.quoted();
                let channel = notify::channel(schema);
                Statements {
                    $($name: fill(include_str!(concat!("../sql/", stringify!($name), ".sql")), &quoted, &channel),)*
                }
            }
        }

        /// Every template, by file name, for tests.
        #[cfg(test)]
        pub(crate) const TEMPLATES: &[(&str, &str)] = &[
            $((stringify!($name), include_str!(concat!("../sql/", stringify!($name), ".sql"))),)*
        ];
    };
}

statements!(
    claim,
    claim_batch,
    start,
    heartbeat,
    complete,
    complete_batch,
    complete_in,
    abort,
    reconcile,
    force_complete,
    reset,
    purge,
    inspect,
    list,
    list_executing,
    history,
    now,
    acquire_lease,
    release_lease,
    inspect_lease,
    list_leases,
    fence,
    fence_lease,
    watch,
);

/// `{notify}`: the expression that wakes the waiters of the record of the event `ev` just
/// inserted, if it is watched (`w.watched`), when the transaction commits; its payload is
/// [`crate::notify::digest`] of the record's namespace and key. Every statement that logs an
/// execution event returns it (`RETURNING (SELECT {notify} FROM … AS w …)`); the claim and
/// complete functions (migrations 5 and 6) call the same `pg_notify` themselves.
const NOTIFY: &str = "CASE WHEN w.watched
                           THEN pg_notify('{channel}',
                                          md5(convert_to(ev.namespace, 'UTF8') || decode('00', 'hex')
                                              || convert_to(ev.key, 'UTF8')))
                      END";

fn fill(template: &str, quoted_schema: &str, channel: &str) -> Arc<str> {
    Arc::from(
        template
            .replace("{notify}", NOTIFY)
            .replace("{schema}", quoted_schema)
            .replace("{channel}", channel),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every statement that appends an execution event notifies, in the same statement; the
    /// others never do.
    #[test]
    fn execution_events_notify() {
        for (name, template) in TEMPLATES {
            let appends = template.contains("'execution', ");
            let logs = template.contains("INSERT INTO {schema}.events");
            let notifies = template.contains("RETURNING (SELECT {notify}");
            assert_eq!(
                logs && appends,
                notifies,
                "{name}: logs an execution event but does not notify, or the reverse"
            );
        }
    }

    #[test]
    fn only_the_schema_is_substituted() {
        let schema = Schema::new("tenant_7").unwrap_or_default();
        let statements = Statements::new(&schema);
        assert!(statements.claim.contains("\"tenant_7\".claim("));
        assert!(statements.claim.contains("'sentinel_tenant_7'"));
        assert!(statements.complete.contains("\"tenant_7\".complete("));
        assert!(statements.complete.contains("'sentinel_tenant_7'"));
        assert!(statements.complete_in.contains("\"tenant_7\".complete("));
        assert!(statements.complete_in.contains("'sentinel_tenant_7'"));
        assert!(statements.abort.contains("\"tenant_7\".executions"));
        assert!(statements.abort.contains("pg_notify('sentinel_tenant_7'"));
        let channel = notify::channel(&schema);
        for (name, template) in TEMPLATES {
            assert!(template.contains("{schema}"), "{name} names no table");
            let filled = fill(template, &schema.quoted(), &channel);
            assert!(!filled.contains('{'), "{name} has another placeholder");
            assert!(!filled.contains("sentinel."), "{name} names a fixed schema");
        }
    }
}
