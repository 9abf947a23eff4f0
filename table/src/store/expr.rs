//! Expression attribute names and values of one request.

use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

use crate::db::UpdateReq;
use crate::item::n;

/// Builds expression attribute names and values.
#[derive(Default)]
pub(super) struct Ex {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Ex {
    pub(super) fn name(&mut self, alias: &str, attr: &str) -> &mut Self {
        self.names.insert(alias.to_owned(), attr.to_owned());
        self
    }

    pub(super) fn num(&mut self, placeholder: &str, v: i64) -> &mut Self {
        self.values.insert(placeholder.to_owned(), n(v));
        self
    }

    pub(super) fn val(&mut self, placeholder: &str, v: AttributeValue) -> &mut Self {
        self.values.insert(placeholder.to_owned(), v);
        self
    }

    pub(super) fn req(self, pk: String, update: String, condition: Vec<String>) -> UpdateReq {
        UpdateReq {
            pk,
            update,
            condition: (!condition.is_empty()).then(|| condition.join(" AND ")),
            names: self.names,
            values: self.values,
        }
    }
}
