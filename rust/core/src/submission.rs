//! A validated job submission: zstd(JSON graph) + zstd(wire frame of the graph inputs), checked in
//! the order of storage spec 2.3.

use std::sync::Arc;

use crate::codec::{decompress, wire_decode, DEFAULT_MAX_DECOMPRESSED_SIZE};
use crate::error::{CoreError, Result};
use crate::graph::TaskGraph;
use crate::Payload;

#[derive(Debug, Clone)]
pub struct Submission {
    pub graph: Arc<TaskGraph>,
    /// Graph input payloads in graph-input order.
    pub inputs: Arc<[Payload]>,
}

impl Submission {
    /// # Errors
    /// `InvalidGraph` for every rejection rule (graph, inputs frame, empty graph, input count).
    pub fn parse(compressed_graph: &[u8], compressed_inputs: &[u8]) -> Result<Self> {
        Self::parse_bounded(
            compressed_graph,
            compressed_inputs,
            DEFAULT_MAX_DECOMPRESSED_SIZE,
        )
    }

    /// [`Self::parse`] with an explicit decompression bound.
    ///
    /// # Errors
    /// See [`Self::parse`].
    pub fn parse_bounded(
        compressed_graph: &[u8],
        compressed_inputs: &[u8],
        max_size: usize,
    ) -> Result<Self> {
        let graph = TaskGraph::from_compressed(compressed_graph, max_size)?;
        let inputs = Self::decode_inputs(compressed_inputs, max_size)?;
        Self::new(Arc::new(graph), inputs)
    }

    /// Inputs for an already-parsed (shared) graph: jobs of one graph share its parse and its
    /// memory. Same rules as [`Self::parse`].
    ///
    /// # Errors
    /// Malformed inputs, empty graph or wrong number of inputs.
    pub fn with_graph(graph: Arc<TaskGraph>, compressed_inputs: &[u8]) -> Result<Self> {
        let inputs = Self::decode_inputs(compressed_inputs, DEFAULT_MAX_DECOMPRESSED_SIZE)?;
        Self::new(graph, inputs)
    }

    fn decode_inputs(compressed: &[u8], max_size: usize) -> Result<Vec<Payload>> {
        let frame = decompress(compressed, max_size).map_err(|e| {
            CoreError::graph(
                "MalformedInputs",
                format!("graph inputs are not valid zstd: {e}"),
            )
        })?;
        let payloads = wire_decode(&frame)
            .map_err(|e| CoreError::graph("MalformedInputs", format!("graph inputs: {e}")))?;
        Ok(payloads.into_iter().map(Payload::from).collect())
    }

    /// Combine an already-parsed graph with its inputs (rules 8 and 9 of spec 2.3).
    ///
    /// # Errors
    /// Empty graph or wrong number of inputs.
    pub fn new(graph: Arc<TaskGraph>, inputs: Vec<Payload>) -> Result<Self> {
        if graph.num_tasks() == 0 {
            return Err(CoreError::graph(
                "TaskGraphEmpty",
                "task graph has no tasks",
            ));
        }
        let expected = graph.graph_inputs().len();
        if inputs.len() != expected {
            return Err(CoreError::graph(
                "TaskGraphInputSizeMismatch",
                format!(
                    "task graph expects {expected} graph inputs but {} were given",
                    inputs.len()
                ),
            ));
        }
        Ok(Self {
            graph,
            inputs: inputs.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{compress, wire_encode};

    const ONE_TASK: &str = r#"{"schema_version":"0.1.0","tasks":[{"tdl_context":{"package":"p","task_func":"f"},"inputs":[{"Value":{"Bytes":{}}}],"outputs":[],"input_sources":null}],"commit_task":null,"cleanup_task":null}"#;

    fn z(b: &[u8]) -> Vec<u8> {
        compress(b).expect("compress")
    }

    #[test]
    fn valid_job_submission_succeeds() {
        let inputs = z(&wire_encode(&[b"x".as_slice()]).expect("enc"));
        let s = Submission::parse(&z(ONE_TASK.as_bytes()), &inputs).expect("valid");
        assert_eq!(s.graph.num_tasks(), 1);
        assert_eq!(&*s.inputs[0], b"x");
    }

    #[test]
    fn submissions_of_one_graph_share_it_and_keep_their_own_inputs() {
        let first_inputs = z(&wire_encode(&[b"x".as_slice()]).expect("enc"));
        let first = Submission::parse(&z(ONE_TASK.as_bytes()), &first_inputs).expect("valid");
        let inputs = z(&wire_encode(&[b"y".as_slice()]).expect("enc"));
        let second = Submission::with_graph(Arc::clone(&first.graph), &inputs).expect("valid");
        assert!(Arc::ptr_eq(&first.graph, &second.graph));
        assert_eq!(
            (&*first.inputs[0], &*second.inputs[0]),
            (&b"x"[..], &b"y"[..])
        );
        let e =
            Submission::with_graph(Arc::clone(&first.graph), &z(&[0, 0, 0, 0])).expect_err("count");
        assert_eq!(e.kind(), "TaskGraphInputSizeMismatch");
        let e = Submission::with_graph(first.graph, b"junk").expect_err("zstd");
        assert_eq!(e.kind(), "MalformedInputs");
    }

    #[test]
    fn empty_task_graph_fails() {
        let g = r#"{"schema_version":"0.1.0","tasks":[],"commit_task":null,"cleanup_task":null}"#;
        let e = Submission::parse(&z(g.as_bytes()), &z(&[0, 0, 0, 0])).expect_err("empty");
        assert_eq!(e.kind(), "TaskGraphEmpty");
    }

    #[test]
    fn mismatched_input_count_fails() {
        let e = Submission::parse(&z(ONE_TASK.as_bytes()), &z(&[0, 0, 0, 0])).expect_err("count");
        assert_eq!(e.kind(), "TaskGraphInputSizeMismatch");
        assert!(e.to_string().contains("expects 1"), "{e}");
        assert!(e.to_string().contains("0 were given"), "{e}");
    }

    #[test]
    fn malformed_inputs_fail() {
        let g = z(ONE_TASK.as_bytes());
        assert_eq!(
            Submission::parse(&g, b"junk").expect_err("zstd").kind(),
            "MalformedInputs"
        );
        assert_eq!(
            Submission::parse(&g, &z(&[5, 0]))
                .expect_err("frame")
                .kind(),
            "MalformedInputs"
        );
        assert_eq!(
            Submission::parse(&z(b"invalid json"), &z(&[0, 0, 0, 0]))
                .expect_err("json")
                .kind(),
            "MalformedGraph"
        );
        assert_eq!(
            Submission::parse(b"junk", b"junk")
                .expect_err("zstd")
                .kind(),
            "MalformedGraph"
        );
    }

    #[test]
    fn decompression_is_bounded() {
        let inputs = z(&wire_encode(&[vec![0u8; 1 << 20]]).expect("enc"));
        let e =
            Submission::parse_bounded(&z(ONE_TASK.as_bytes()), &inputs, 1 << 16).expect_err("big");
        assert_eq!(e.kind(), "MalformedInputs");
    }
}
