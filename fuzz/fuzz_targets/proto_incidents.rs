//! `fleet.incidents.v1` records (incident lifecycle events (incident's outbox; the notification service will consume them)): protobuf decode
//! (`Record::decode`), the vehicle id check and `fleetctl tail`'s
//! rendering. No service validates these records further yet; when one
//! does, its checks belong here.
#![no_main]

use fleetwatch_fuzz::{VEHICLE, record, render};
use fleetwatch_proto::v1::IncidentEvent;
use fleetwatch_proto::{message_types, topics};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    render(message_types::INCIDENT_EVENT, data);
    let rec = record(topics::INCIDENTS, Some(VEHICLE), data);
    let Ok(msg) = rec.decode::<IncidentEvent>() else {
        return;
    };
    let _ = fleetwatch_db::valid_vehicle_id(&msg.vehicle_id);
    // What decodes re-encodes canonically: encoding the re-decoded value
    // gives the same bytes (compared as bytes, so NaN floats compare equal).
    let bytes = msg.encode_to_vec();
    let again = IncidentEvent::decode(bytes.as_slice()).expect("re-encoded value decodes");
    assert_eq!(again.encode_to_vec(), bytes);
});
