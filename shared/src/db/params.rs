//! Statement parameters for SQL built at run time, numbered by the one builder that binds them.

use std::sync::Arc;

use tokio_postgres::types::{ToSql, Type};

use super::Param;

/// The parameters of a statement whose text is built at run time (the query compiler, retrieval
/// with a record filter). Each value bound gets the next placeholder, so code that adds SQL to a
/// statement never assumes where another part's numbering ends: one part binds into the builder,
/// and the next part continues from a clone of it.
#[derive(Clone, Default)]
pub struct Params(Vec<(Arc<dyn ToSql + Send + Sync>, Type)>);

impl Params {
    /// No parameters yet: the first bound is `$1`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds `value`, declared as `ty`, and returns its placeholder (`$n`).
    pub fn bind(&mut self, value: impl ToSql + Send + Sync + 'static, ty: Type) -> String {
        self.0.push((Arc::new(value), ty));
        format!("${}", self.0.len())
    }

    /// How many are bound.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The parameters, typed and in order, as [`TenantTx`](super::TenantTx) statements take them.
    pub fn as_params(&self) -> Vec<Param<'_>> {
        self.0
            .iter()
            .map(|(v, t)| (v.as_ref() as &(dyn ToSql + Sync), t.clone()))
            .collect()
    }
}

/// Only the count: values can be tenant data.
impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Params({})", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_continue_from_a_clone() {
        let mut p = Params::new();
        assert_eq!(p.bind(1_i64, Type::INT8), "$1");
        assert_eq!(p.bind("x".to_owned(), Type::TEXT), "$2");
        let mut q = p.clone();
        assert_eq!(q.bind(true, Type::BOOL), "$3");
        assert_eq!((p.len(), q.len()), (2, 3));
        let types: Vec<Type> = q.as_params().into_iter().map(|(_, t)| t).collect();
        assert_eq!(types, [Type::INT8, Type::TEXT, Type::BOOL]);
        assert_eq!(format!("{q:?}"), "Params(3)");
    }
}
