//! The SQL of every store operation, from `sql/*.sql`, with the schema filled in once per store.
//!
//! Each file is one statement: one round trip, one atomic step. The only thing ever substituted
//! into the text is the checked, quoted schema name (`{schema}`); every value is a bind
//! parameter, and sqlx prepares each statement once per connection.

use std::sync::Arc;

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
                Statements {
                    $($name: fill(include_str!(concat!("../sql/", stringify!($name), ".sql")), &quoted),)*
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
    start,
    heartbeat,
    complete,
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
);

fn fill(template: &str, quoted_schema: &str) -> Arc<str> {
    Arc::from(template.replace("{schema}", quoted_schema))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_schema_is_substituted() {
        let schema = Schema::new("tenant_7").unwrap_or_default();
        let statements = Statements::new(&schema);
        assert!(statements.claim.contains("\"tenant_7\".executions"));
        for (name, template) in TEMPLATES {
            assert!(template.contains("{schema}"), "{name} names no table");
            let filled = fill(template, &schema.quoted());
            assert!(!filled.contains('{'), "{name} has another placeholder");
            assert!(!filled.contains("sentinel."), "{name} names a fixed schema");
        }
    }
}
