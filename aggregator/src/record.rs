//! One stream record as the aggregator reads it, whichever way it arrived: in a Lambda event
//! (`aws_lambda_events`) or from `GetRecords` in local mode (`aws-sdk-dynamodbstreams`).

use aws_lambda_events::event::dynamodb::EventRecord;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

/// A DynamoDB item image, in the SDK's types (so a clone can be written back as it is).
pub type Image = HashMap<String, AttributeValue>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventName {
    Insert,
    Modify,
    Remove,
    Other,
}

impl EventName {
    pub fn parse(name: &str) -> EventName {
        match name {
            "INSERT" => EventName::Insert,
            "MODIFY" => EventName::Modify,
            "REMOVE" => EventName::Remove,
            _ => EventName::Other,
        }
    }
}

#[derive(Clone, Debug)]
pub struct StreamRecord {
    pub event_name: EventName,
    /// The item identifier of a partial batch response.
    pub sequence_number: String,
    pub new_image: Image,
    pub old_image: Image,
}

impl StreamRecord {
    pub fn from_lambda(record: EventRecord) -> StreamRecord {
        let change = record.change;
        StreamRecord {
            event_name: EventName::parse(&record.event_name),
            sequence_number: change.sequence_number.unwrap_or_default(),
            new_image: change.new_image.into(),
            old_image: change.old_image.into(),
        }
    }

    pub fn from_stream(record: aws_sdk_dynamodbstreams::types::Record) -> StreamRecord {
        let event_name = record.event_name().map_or(EventName::Other, |n| EventName::parse(n.as_str()));
        let change = record.dynamodb.unwrap_or_else(|| aws_sdk_dynamodbstreams::types::StreamRecord::builder().build());
        StreamRecord {
            event_name,
            sequence_number: change.sequence_number.clone().unwrap_or_default(),
            new_image: convert(change.new_image.unwrap_or_default()),
            old_image: convert(change.old_image.unwrap_or_default()),
        }
    }
}

fn convert(image: HashMap<String, aws_sdk_dynamodbstreams::types::AttributeValue>) -> Image {
    image.into_iter().map(|(k, v)| (k, serde_dynamo::AttributeValue::from(v).into())).collect()
}

/// `S` attribute `name` of `image`.
pub fn string<'a>(image: &'a Image, name: &str) -> Option<&'a str> {
    image.get(name).and_then(|v| v.as_s().ok()).map(String::as_str)
}

/// `N` attribute `name` of `image` as an integer: `Ok(None)` when absent, an error when it is
/// not an integer (a malformed item is contained to its record).
pub fn int(image: &Image, name: &str) -> Result<Option<i64>, String> {
    match image.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(n)) => {
            n.parse::<i64>().map(Some).map_err(|_| format!("attribute {name} is not an integer: {n:?}"))
        }
        Some(other) => Err(format!("attribute {name} is not a number: {other:?}")),
    }
}
