//! One telemetry point of a JSON body, read straight from the bytes.
//!
//! Going through `serde_json::Value` built a map with an owned `String` per
//! key and a node per value for every point, then walked it again: at 50k
//! points/s that was most of ingest's CPU. These types keep what the rules
//! need and nothing else: keys and strings borrow from the body (unless
//! escaped), numbers become `f64` as they are read, nested values that are
//! never stored are skipped without being built. Wrong types are not parse
//! errors here; they are kept as their kind so the rules in `parse` can name
//! the field and the reason.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A JSON value reduced to what the telemetry rules look at.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    Null,
    Number(f64),
    Str(Cow<'a, str>),
    /// `true`/`false`, an array or an object: never a valid telemetry value.
    Other,
}

impl<'a> From<&'a serde_json::Value> for Scalar<'a> {
    fn from(v: &'a serde_json::Value) -> Self {
        use serde_json::Value;
        match v {
            Value::Null => Scalar::Null,
            // Without arbitrary precision every JSON number has an f64.
            Value::Number(n) => n.as_f64().map_or(Scalar::Other, Scalar::Number),
            Value::String(s) => Scalar::Str(Cow::Borrowed(s)),
            _ => Scalar::Other,
        }
    }
}

/// The standard fields, in `TelemetryPoint` order.
pub const STANDARD_FIELDS: [&str; 6] = ["lat", "lon", "alt", "speed", "heading", "battery"];

/// The `metrics` member: an object of named values, or something else.
#[derive(Debug, Default)]
pub enum MetricsMember<'a> {
    #[default]
    Absent,
    Object(Vec<(Cow<'a, str>, Scalar<'a>)>),
    Other(Scalar<'a>),
}

/// A JSON object as a telemetry point. Later duplicate keys win, as they do
/// in `serde_json::Map`.
#[derive(Debug, Default)]
pub struct JsonPoint<'a> {
    pub drone_id: Option<Scalar<'a>>,
    pub vehicle_id: Option<Scalar<'a>>,
    pub timestamp: Option<Scalar<'a>>,
    pub standard: [Option<Scalar<'a>>; 6],
    pub metrics: MetricsMember<'a>,
    /// Every other member, in document order.
    pub extra: Vec<(Cow<'a, str>, Scalar<'a>)>,
}

/// One element of the body: a point, or a value that is not an object.
#[derive(Debug)]
pub enum Item<'a> {
    Point(Box<JsonPoint<'a>>),
    NotObject,
}

/// A map key, borrowed from the body unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Visits any value as a `Scalar`, skipping the insides of arrays and
/// objects.
struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Number(v as f64))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Number(v as f64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Number(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

impl<'de> Deserialize<'de> for MetricsMember<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MetricsMember<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((Key(k), v)) = map.next_entry::<Key, Scalar>()? {
                    out.push((k, v));
                }
                Ok(MetricsMember::Object(out))
            }
            // Anything else is only a kind, as a scalar.
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MetricsMember::Other(Scalar::Null))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MetricsMember::Other(Scalar::Null))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                ScalarVisitor.visit_bool(v).map(MetricsMember::Other)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                ScalarVisitor.visit_i64(v).map(MetricsMember::Other)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                ScalarVisitor.visit_u64(v).map(MetricsMember::Other)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                ScalarVisitor.visit_f64(v).map(MetricsMember::Other)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                // The value of a non-object `metrics` is never used, only that
                // it is a string.
                Ok(MetricsMember::Other(Scalar::Str(Cow::Borrowed(""))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                ScalarVisitor.visit_seq(seq).map(MetricsMember::Other)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Item<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Item<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Item<'de>, A::Error> {
                let mut p = JsonPoint::default();
                while let Some(Key(key)) = map.next_key::<Key>()? {
                    match key.as_ref() {
                        "drone_id" => p.drone_id = Some(map.next_value()?),
                        "vehicle_id" => p.vehicle_id = Some(map.next_value()?),
                        "timestamp" => p.timestamp = Some(map.next_value()?),
                        "metrics" => p.metrics = map.next_value()?,
                        k => match STANDARD_FIELDS.iter().position(|f| *f == k) {
                            Some(i) => p.standard[i] = Some(map.next_value()?),
                            None => {
                                let v = map.next_value()?;
                                p.extra.push((key, v));
                            }
                        },
                    }
                }
                Ok(Item::Point(Box::new(p)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Item<'de>, E> {
                Ok(Item::NotObject)
            }
            fn visit_none<E: de::Error>(self) -> Result<Item<'de>, E> {
                Ok(Item::NotObject)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Item<'de>, E> {
                Ok(Item::NotObject)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Item<'de>, E> {
                Ok(Item::NotObject)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Item<'de>, E> {
                Ok(Item::NotObject)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Item<'de>, E> {
                Ok(Item::NotObject)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Item<'de>, E> {
                Ok(Item::NotObject)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Item::NotObject)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_land_in_their_slots_and_borrow_from_the_body() {
        let body = r#"{"lat":1.5,"lon":-2,"drone_id":"d-1","rssi":-61,"mode":"auto",
            "metrics":{"temp":31.5,"note":"x","deep":{"a":1}},"tags":[1,[2]],"ok":true,"n":null}"#;
        let Item::Point(p) = serde_json::from_str::<Item>(body).unwrap() else {
            panic!("not a point")
        };
        assert_eq!(p.standard[0], Some(Scalar::Number(1.5)));
        assert_eq!(p.standard[1], Some(Scalar::Number(-2.0)));
        assert!(matches!(
            &p.drone_id,
            Some(Scalar::Str(Cow::Borrowed("d-1")))
        ));
        let extra: Vec<(&str, &Scalar)> = p.extra.iter().map(|(k, v)| (k.as_ref(), v)).collect();
        assert_eq!(
            extra,
            vec![
                ("rssi", &Scalar::Number(-61.0)),
                ("mode", &Scalar::Str("auto".into())),
                ("tags", &Scalar::Other),
                ("ok", &Scalar::Other),
                ("n", &Scalar::Null),
            ]
        );
        let MetricsMember::Object(m) = &p.metrics else {
            panic!("metrics not an object")
        };
        assert_eq!(m.len(), 3);
        assert_eq!(m[2], ("deep".into(), Scalar::Other));
    }

    #[test]
    fn escaped_keys_are_owned_and_later_duplicates_win() {
        let Item::Point(p) =
            serde_json::from_str::<Item>(r#"{"l\u0061t":1,"lat":2,"metrics":"x"}"#).unwrap()
        else {
            panic!("not a point")
        };
        assert_eq!(p.standard[0], Some(Scalar::Number(2.0)));
        assert!(matches!(p.metrics, MetricsMember::Other(Scalar::Str(_))));
        assert!(matches!(
            serde_json::from_str::<Item>("[1,{}]").unwrap(),
            Item::NotObject
        ));
    }
}
