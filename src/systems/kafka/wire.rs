//! The Kafka protocol calls librdkafka does not expose, written by hand with the
//! `kafka-protocol` codec: ApiVersions (what the broker offers), DescribeLogDirs (partition
//! sizes: the native probe) and IncrementalAlterConfigs (retiring a compacted topic).

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, DescribeLogDirsResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{
    Decodable, Encodable, HeaderVersion, Message as ProtocolMessage, Request, StrBytes,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::model::{SysError, SysResult};

/// A request frame: length, header, body.
pub fn encode_request<R: Request>(
    request: &R,
    version: i16,
    correlation_id: i32,
) -> anyhow::Result<Bytes> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("dedup-lab")));
    let mut body = BytesMut::new();
    header.encode(&mut body, R::header_version(version))?;
    request.encode(&mut body, version)?;
    let mut frame = BytesMut::with_capacity(4 + body.len());
    frame.put_i32(i32::try_from(body.len())?);
    frame.put(body);
    Ok(frame.freeze())
}

/// Decodes the reply (after its length prefix) to a request of type `R` sent at `version`.
pub fn decode_response<R: Request>(
    mut reply: Bytes,
    version: i16,
    correlation_id: i32,
) -> anyhow::Result<R::Response> {
    let header = ResponseHeader::decode(&mut reply, R::Response::header_version(version))?;
    anyhow::ensure!(
        header.correlation_id == correlation_id,
        "reply to correlation id {}, expected {correlation_id}",
        header.correlation_id
    );
    R::Response::decode(&mut reply, version)
}

/// Sends one request on a fresh plain-TCP connection to `addr` and decodes the reply. For the
/// calls librdkafka does not expose: ApiVersions (what the broker offers) and the adapter's
/// own IncrementalAlterConfigs.
pub async fn call<R: Request>(
    addr: &str,
    request: &R,
    version: i16,
    timeout: Duration,
) -> SysResult<R::Response> {
    Conn::default().call(addr, request, version, timeout).await
}

/// A plain-TCP connection kept open across calls (the meter's: DescribeLogDirs many times a
/// second must not open a connection each time). It reconnects when the address changes or
/// after a failed call, whose stream may hold half a reply.
#[derive(Default)]
pub struct Conn {
    open: Option<(String, tokio::net::TcpStream)>,
    correlation_id: i32,
}

impl Conn {
    /// Sends one request to `addr` and decodes the reply.
    pub async fn call<R: Request>(
        &mut self,
        addr: &str,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> SysResult<R::Response> {
        let api = ApiKey::try_from(R::KEY).map_or("request".to_string(), |k| format!("{k:?}"));
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let id = self.correlation_id;
        let frame = encode_request(request, version, id)
            .map_err(|e| SysError::failed(format!("kafka: encoding {api}: {e:#}")))?;
        if self.open.as_ref().is_some_and(|(a, _)| a != addr) {
            self.open = None;
        }
        let open = &mut self.open;
        let exchange = async {
            let stream = match open {
                Some((_, stream)) => stream,
                None => {
                    &mut open
                        .insert((addr.to_string(), TcpStream::connect(addr).await?))
                        .1
                }
            };
            stream.write_all(&frame).await?;
            let len = stream.read_i32().await?;
            let len = usize::try_from(len)
                .ok()
                .filter(|&n| n <= 64 << 20)
                .ok_or_else(|| std::io::Error::other(format!("reply length {len}")))?;
            let mut reply = vec![0; len];
            stream.read_exact(&mut reply).await?;
            Ok::<_, std::io::Error>(Bytes::from(reply))
        };
        let reply = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                self.open = None;
                return Err(SysError::connection(format!("kafka: {api} to {addr}: {e}")));
            }
            Err(_) => {
                self.open = None;
                return Err(SysError::connection(format!(
                    "kafka: {api} to {addr}: no reply in {timeout:?}"
                )));
            }
        };
        decode_response::<R>(reply, version, id).map_err(|e| {
            self.open = None;
            SysError::failed(format!("kafka: decoding the {api} reply: {e:#}"))
        })
    }
}

/// The version of request `R` to use: the highest both the broker and the codec speak.
pub fn shared_version<R: Request + ProtocolMessage>(apis: &[ApiVersion]) -> Option<i16> {
    let ours = R::VERSIONS;
    let theirs = apis.iter().find(|a| a.api_key == R::KEY)?;
    let max = theirs.max_version.min(ours.max);
    (max >= theirs.min_version.max(ours.min)).then_some(max)
}

/// The versions of the APIs the adapter relies on, for the server record.
pub fn describe_apis(apis: &[ApiVersion]) -> String {
    let used = [
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::CreateTopics,
        ApiKey::DeleteTopics,
        ApiKey::DeleteRecords,
        ApiKey::DescribeLogDirs,
        ApiKey::IncrementalAlterConfigs,
    ];
    let list: Vec<String> = used
        .iter()
        .map(|&key| match apis.iter().find(|a| a.api_key == key as i16) {
            Some(a) => format!("{key:?} v{}-{}", a.min_version, a.max_version),
            None => format!("{key:?} -"),
        })
        .collect();
    format!("{} APIs ({})", apis.len(), list.join(", "))
}

/// Bytes of partition 0 of `topic` over the log dirs of a DescribeLogDirs response (future
/// logs of a move between dirs excluded: they are not the serving copy).
pub fn partition_bytes(response: &DescribeLogDirsResponse, topic: &str) -> Result<u64, String> {
    if response.error_code != 0 {
        return Err(format!("error code {}", response.error_code));
    }
    let mut total = None;
    for dir in &response.results {
        if dir.error_code != 0 {
            return Err(format!(
                "log dir {}: error code {}",
                dir.log_dir.as_str(),
                dir.error_code
            ));
        }
        for p in dir
            .topics
            .iter()
            .filter(|t| t.name.0.as_str() == topic)
            .flat_map(|t| &t.partitions)
            .filter(|p| p.partition_index == 0 && !p.is_future_key)
        {
            *total.get_or_insert(0) += u64::try_from(p.partition_size).unwrap_or(0);
        }
    }
    total.ok_or_else(|| format!("no log dir of the leader holds {topic}"))
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
    use kafka_protocol::messages::describe_log_dirs_response::{
        DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
    };
    use kafka_protocol::messages::{
        ApiVersionsRequest, ApiVersionsResponse, DescribeLogDirsRequest,
        IncrementalAlterConfigsRequest, TopicName,
    };
    use kafka_protocol::protocol::decode_request_header_from_buffer;

    use super::*;

    /// A reply as a broker writes it: response header and body, without the length prefix.
    fn reply<R: Encodable + HeaderVersion>(body: &R, version: i16, correlation_id: i32) -> Bytes {
        let mut buf = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut buf, R::header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    fn partition(size: i64, future: bool) -> DescribeLogDirsPartition {
        DescribeLogDirsPartition::default()
            .with_partition_index(0)
            .with_partition_size(size)
            .with_is_future_key(future)
    }

    fn topic(name: &'static str, parts: Vec<DescribeLogDirsPartition>) -> DescribeLogDirsTopic {
        DescribeLogDirsTopic::default()
            .with_name(TopicName(StrBytes::from_static_str(name)))
            .with_partitions(parts)
    }

    fn log_dirs() -> DescribeLogDirsResponse {
        DescribeLogDirsResponse::default().with_results(vec![
            DescribeLogDirsResult::default()
                .with_log_dir(StrBytes::from_static_str("/data/a"))
                .with_topics(vec![
                    topic("dedup_lab-1", vec![partition(1000, false)]),
                    topic("other", vec![partition(7, false)]),
                ]),
            DescribeLogDirsResult::default()
                .with_log_dir(StrBytes::from_static_str("/data/b"))
                .with_topics(vec![topic(
                    "dedup_lab-1",
                    vec![partition(234, false), partition(99, true)],
                )]),
        ])
    }

    #[test]
    fn decodes_describe_log_dirs_replies_of_every_version() {
        for version in 1..=4 {
            let bytes = reply(&log_dirs(), version, 7);
            let decoded = decode_response::<DescribeLogDirsRequest>(bytes, version, 7).unwrap();
            assert_eq!(
                partition_bytes(&decoded, "dedup_lab-1"),
                Ok(1234),
                "v{version}"
            );
            assert!(partition_bytes(&decoded, "dedup_lab-2").is_err());
        }
        let wrong = reply(&log_dirs(), 2, 8);
        assert!(decode_response::<DescribeLogDirsRequest>(wrong, 2, 7).is_err());
    }

    #[test]
    fn a_failed_log_dir_is_an_error_not_a_smaller_size() {
        let mut r = log_dirs();
        r.results[1].error_code = 56; // KAFKA_STORAGE_ERROR
        assert!(partition_bytes(&r, "dedup_lab-1").is_err());
    }

    #[test]
    fn encodes_describe_log_dirs_requests_a_broker_can_read() {
        let request = DescribeLogDirsRequest::default().with_topics(Some(vec![
            DescribableLogDirTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("dedup_lab-1")))
                .with_partitions(vec![0]),
        ]));
        for version in 1..=4 {
            let mut frame = encode_request(&request, version, 3).unwrap();
            let len = bytes::Buf::get_i32(&mut frame);
            assert_eq!(len as usize, frame.len());
            let header = decode_request_header_from_buffer(&mut frame).unwrap();
            assert_eq!(header.request_api_key, ApiKey::DescribeLogDirs as i16);
            assert_eq!(header.request_api_version, version);
            assert_eq!(header.correlation_id, 3);
            let decoded = DescribeLogDirsRequest::decode(&mut frame, version).unwrap();
            assert_eq!(decoded, request);
        }
    }

    fn api(key: ApiKey, min: i16, max: i16) -> ApiVersion {
        ApiVersion::default()
            .with_api_key(key as i16)
            .with_min_version(min)
            .with_max_version(max)
    }

    #[test]
    fn uses_describe_log_dirs_only_in_a_version_both_sides_speak() {
        assert_eq!(
            shared_version::<DescribeLogDirsRequest>(&[api(ApiKey::Produce, 0, 11)]),
            None
        );
        assert_eq!(
            shared_version::<DescribeLogDirsRequest>(&[api(ApiKey::DescribeLogDirs, 0, 0)]),
            None
        );
        assert_eq!(
            shared_version::<DescribeLogDirsRequest>(&[api(ApiKey::DescribeLogDirs, 0, 2)]),
            Some(2)
        );
        assert_eq!(
            shared_version::<DescribeLogDirsRequest>(&[api(ApiKey::DescribeLogDirs, 1, 9)]),
            Some(4)
        );
        // Each request type is looked up by its own key.
        let apis = [
            api(ApiKey::DescribeLogDirs, 0, 4),
            api(ApiKey::IncrementalAlterConfigs, 0, 1),
        ];
        assert_eq!(
            shared_version::<IncrementalAlterConfigsRequest>(&apis),
            Some(1)
        );
        assert_eq!(
            shared_version::<IncrementalAlterConfigsRequest>(&apis[..1]),
            None
        );
    }

    #[test]
    fn decodes_api_versions_replies() {
        let body = ApiVersionsResponse::default().with_api_keys(vec![
            api(ApiKey::Produce, 0, 11),
            api(ApiKey::DescribeLogDirs, 1, 4),
        ]);
        let decoded = decode_response::<ApiVersionsRequest>(reply(&body, 0, 1), 0, 1).unwrap();
        assert_eq!(
            describe_apis(&decoded.api_keys),
            "2 APIs (Produce v0-11, Fetch -, ListOffsets -, CreateTopics -, DeleteTopics -, \
             DeleteRecords -, DescribeLogDirs v1-4, IncrementalAlterConfigs -)"
        );
    }
}
