//! The outcome of a conditional UpdateItem, where a failed condition is a lost race.

use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};

/// `Ok(true)`: written; `Ok(false)`: its condition failed (someone else wrote first, which
/// is not an error); `Err`: the call failed.
pub fn conditional<R: std::fmt::Debug>(
    result: Result<UpdateItemOutput, SdkError<UpdateItemError, R>>,
) -> Result<bool, String> {
    match result {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(false),
        Err(e) => Err(DisplayErrorContext(e).to_string()),
    }
}
