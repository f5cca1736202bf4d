//! The checks every consumer makes of a decoded record before its effect:
//! the record key is the vehicle id the value names (per-vehicle order rests
//! on it), the id is a valid one, and times lie where a database can store
//! them. A failed check is a data error: the record is dead-lettered with
//! the returned reason, never retried.

use std::fmt::Display;

use crate::Record;

/// 9999-12-31T23:59:59Z: the last microsecond every store accepts.
pub const MAX_TIME_UNIX_US: i64 = 253_402_300_799_000_000;

/// The value's `vehicle_id` is valid and equal to the record key.
pub fn check_vehicle(record: &Record, vehicle_id: &str) -> Result<(), String> {
    if vehicle_id.is_empty() {
        return Err("vehicle_id is empty".into());
    }
    if !fleetwatch_proto::valid_vehicle_id(vehicle_id) {
        return Err(format!(
            "vehicle_id {vehicle_id:?} is not a valid vehicle id"
        ));
    }
    if record.key_str() != Some(vehicle_id) {
        return Err(format!(
            "record key {:?} differs from vehicle_id {vehicle_id:?}",
            record.key_str().unwrap_or("<none>")
        ));
    }
    Ok(())
}

/// `us` (microseconds since the epoch) lies within 1970..9999. `what` names
/// the field; it is formatted only when the check fails, so the hot path
/// renders nothing.
pub fn check_time(what: impl Display, us: i64) -> Result<(), String> {
    if (0..=MAX_TIME_UNIX_US).contains(&us) {
        Ok(())
    } else {
        Err(format!("{what} {us} is outside 1970..9999"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(key: &str) -> Record {
        Record {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            key: Some(key.as_bytes().to_vec()),
            payload: None,
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    #[test]
    fn vehicles() {
        assert!(check_vehicle(&keyed("drone-1"), "drone-1").is_ok());
        assert_eq!(
            check_vehicle(&keyed(""), "").unwrap_err(),
            "vehicle_id is empty"
        );
        assert!(
            check_vehicle(&keyed("a/b"), "a/b")
                .unwrap_err()
                .contains("not a valid")
        );
        assert_eq!(
            check_vehicle(&keyed("drone-2"), "drone-1").unwrap_err(),
            "record key \"drone-2\" differs from vehicle_id \"drone-1\""
        );
    }

    #[test]
    fn times() {
        assert!(check_time("t", 0).is_ok());
        assert!(check_time("t", MAX_TIME_UNIX_US).is_ok());
        assert_eq!(
            check_time("points[3].time_unix_us", -1).unwrap_err(),
            "points[3].time_unix_us -1 is outside 1970..9999"
        );
        assert!(check_time("t", MAX_TIME_UNIX_US + 1).is_err());
    }
}
