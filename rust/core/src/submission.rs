//! A validated job submission: zstd(JSON graph) + zstd(wire frame of the graph inputs), checked in
//! the order of docs/internals.md ("Task graphs").

use std::sync::Arc;

use crate::codec::{
    decompress_bounded, wire_decode, DecompressError, DEFAULT_MAX_DECOMPRESSED_SIZE,
};
use crate::error::{CoreError, Result};
use crate::graph::TaskGraph;
use crate::Payload;

/// Size limits applied while parsing a submission. Every bound is enforced while decompressing or
/// reading, before anything is allocated for the excess.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmissionLimits {
    /// Decompressed size of the task-graph JSON.
    pub max_graph_bytes: usize,
    /// Decompressed size of the graph-input wire frame.
    pub max_input_bytes: usize,
    /// Regular tasks per job.
    pub max_tasks: usize,
}

impl SubmissionLimits {
    /// Today's behaviour: 1 GiB for each decompressed buffer, no task-count limit.
    pub const DEFAULT: Self = Self {
        max_graph_bytes: DEFAULT_MAX_DECOMPRESSED_SIZE,
        max_input_bytes: DEFAULT_MAX_DECOMPRESSED_SIZE,
        max_tasks: usize::MAX,
    };
}

impl Default for SubmissionLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[derive(Debug, Clone)]
pub struct Submission {
    pub graph: Arc<TaskGraph>,
    /// Graph input payloads in graph-input order.
    pub inputs: Arc<[Payload]>,
}

impl Submission {
    /// Parse with [`SubmissionLimits::DEFAULT`].
    ///
    /// # Errors
    /// See [`Self::parse_limited`].
    pub fn parse(compressed_graph: &[u8], compressed_inputs: &[u8]) -> Result<Self> {
        Self::parse_limited(
            compressed_graph,
            compressed_inputs,
            &SubmissionLimits::DEFAULT,
        )
    }

    /// Parse and validate a submission under `limits`.
    ///
    /// # Errors
    /// `InvalidGraph` for every rejection rule (graph, inputs frame, empty graph, input count);
    /// `LimitExceeded` (`GraphTooLarge`, `InputsTooLarge`, `TooManyTasks`).
    pub fn parse_limited(
        compressed_graph: &[u8],
        compressed_inputs: &[u8],
        limits: &SubmissionLimits,
    ) -> Result<Self> {
        let graph = TaskGraph::from_compressed_limited(
            compressed_graph,
            limits.max_graph_bytes,
            limits.max_tasks,
        )?;
        Self::check_nonempty(&graph)?;
        let inputs = Self::decode_inputs(&graph, compressed_inputs, limits.max_input_bytes)?;
        Self::new(Arc::new(graph), inputs)
    }

    /// Inputs for an already-parsed (shared) graph: jobs of one graph share its parse and its
    /// memory. Same rules as [`Self::parse`], inputs bounded by the default 1 GiB.
    ///
    /// # Errors
    /// Malformed inputs, empty graph or wrong number of inputs.
    pub fn with_graph(graph: Arc<TaskGraph>, compressed_inputs: &[u8]) -> Result<Self> {
        Self::with_graph_limited(graph, compressed_inputs, DEFAULT_MAX_DECOMPRESSED_SIZE)
    }

    /// [`Self::with_graph`] with an explicit bound on the decompressed input frame.
    ///
    /// # Errors
    /// As [`Self::with_graph`]; `LimitExceeded` `InputsTooLarge`.
    pub fn with_graph_limited(
        graph: Arc<TaskGraph>,
        compressed_inputs: &[u8],
        max_input_bytes: usize,
    ) -> Result<Self> {
        Self::check_nonempty(&graph)?;
        let inputs = Self::decode_inputs(&graph, compressed_inputs, max_input_bytes)?;
        Self::new(graph, inputs)
    }

    fn check_nonempty(graph: &TaskGraph) -> Result<()> {
        if graph.num_tasks() == 0 {
            return Err(CoreError::graph(
                "TaskGraphEmpty",
                "task graph has no tasks",
            ));
        }
        Ok(())
    }

    fn count_mismatch(expected: usize, given: usize) -> CoreError {
        CoreError::graph(
            "TaskGraphInputSizeMismatch",
            format!("task graph expects {expected} graph inputs but {given} were given"),
        )
    }

    /// Every graph-input payload against its declared type.
    fn check_inputs(graph: &TaskGraph, inputs: &[Payload]) -> Result<()> {
        for (i, (&d, payload)) in graph.graph_inputs().iter().zip(inputs).enumerate() {
            let Some(ty) = graph.dep_type(d) else {
                return Err(CoreError::internal(
                    "TaskGraphCorrupted",
                    format!("graph input {i} has no type"),
                ));
            };
            if let Err(e) = crate::value::validate(ty.value_type(), payload) {
                // Error path only: find which task input this graph input feeds.
                let at = graph
                    .dep_destinations(d)
                    .first()
                    .map_or_else(String::new, |r| {
                        format!(
                            " (task {} `{}`, input {})",
                            r.task_idx,
                            graph.context(r.task_idx),
                            r.position
                        )
                    });
                return Err(CoreError::graph(
                    crate::value::INVALID_INPUT_VALUE,
                    format!("graph input {i}{at}: {e}"),
                ));
            }
        }
        Ok(())
    }

    fn decode_inputs(
        graph: &TaskGraph,
        compressed: &[u8],
        max_size: usize,
    ) -> Result<Vec<Payload>> {
        let frame = decompress_bounded(compressed, max_size).map_err(|e| match e {
            DecompressError::TooLarge { declared: Some(n) } => CoreError::limit(
                "InputsTooLarge",
                format!(
                    "graph inputs decompress to {n} bytes (limit max_input_bytes = {max_size})"
                ),
            ),
            DecompressError::TooLarge { declared: None } => CoreError::limit(
                "InputsTooLarge",
                format!(
                    "graph inputs decompress to more than {max_size} bytes (limit \
                     max_input_bytes = {max_size})"
                ),
            ),
            DecompressError::Malformed(m) => CoreError::graph(
                "MalformedInputs",
                format!("graph inputs are not valid zstd: {m}"),
            ),
        })?;
        // The frame's count header is checked against the graph before anything is decoded, so
        // a frame of many tiny payloads cannot make us build more entries than the graph has.
        let expected = graph.graph_inputs().len();
        if let Some(header) = frame.get(..4) {
            let claimed = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            if claimed as usize != expected {
                return Err(Self::count_mismatch(expected, claimed as usize));
            }
        }
        let payloads = wire_decode(&frame)
            .map_err(|e| CoreError::graph("MalformedInputs", format!("graph inputs: {e}")))?;
        Ok(payloads.into_iter().map(Payload::from).collect())
    }

    /// Combine an already-parsed graph with its inputs (the last rules of docs/internals.md, "Task graphs"), each input
    /// checked against its declared type (see [`crate::value`]).
    ///
    /// # Errors
    /// Empty graph, wrong number of inputs, or `InvalidInputValue`.
    pub fn new(graph: Arc<TaskGraph>, inputs: Vec<Payload>) -> Result<Self> {
        Self::check_nonempty(&graph)?;
        let expected = graph.graph_inputs().len();
        if inputs.len() != expected {
            return Err(Self::count_mismatch(expected, inputs.len()));
        }
        Self::check_inputs(&graph, &inputs)?;
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

    fn bin(b: &[u8]) -> Vec<u8> {
        crate::value::msgpack_bin(b)
    }

    #[test]
    fn graph_inputs_are_checked_against_their_types() {
        let g = br#"{"schema_version":"0.1.0","tasks":[
            {"tdl_context":{"package":"pkg","task_func":"a"},"inputs":[{"Value":{"Bytes":{}}}],"outputs":[{"Value":{"Bytes":{}}}],"input_sources":null},
            {"tdl_context":{"package":"pkg","task_func":"fn"},"inputs":[{"Value":{"String":{}}},{"Value":{"Primitive":{"Int":"Int32"}}},{"Value":{"Primitive":{"Int":"Int8"}}}],"outputs":[],"input_sources":null}
            ],"commit_task":null,"cleanup_task":null}"#;
        let g = z(g);
        let parse =
            |inputs: &[&[u8]]| Submission::parse(&g, &z(&wire_encode(inputs).expect("frame")));
        let ok: [&[u8]; 4] = [&bin(b"x"), &[0xa1, b's'], &[0x05], &[0xd0, 0x80]];
        parse(&ok).expect("well typed");
        let e = parse(&[&bin(b"x"), &[0xa1, b's'], &[0xa1, b's'], &[0]]).expect_err("str for int");
        assert_eq!(e.kind(), "InvalidInputValue");
        assert!(matches!(e, CoreError::InvalidGraph { .. }));
        assert_eq!(
            e.to_string(),
            "graph input 2 (task 1 `pkg.fn`, input 1): expected Int32, got str"
        );
        let e = parse(&[&bin(b"x"), &[0xa1, b's'], &[0], &[0xcd, 1, 0x2c]]).expect_err("range");
        assert_eq!(
            e.to_string(),
            "graph input 3 (task 1 `pkg.fn`, input 2): value 300 out of range for Int8"
        );
        let e = parse(&[&[0xc4, 9, 1], &[0xa1, b's'], &[0], &[0]]).expect_err("not msgpack");
        assert!(
            e.to_string()
                .starts_with("graph input 0 (task 0 `pkg.a`, input 0): not valid msgpack: "),
            "{e}"
        );
        let e = parse(&[&bin(b"x"), &[0xa2, 0xc3, 0x28], &[0], &[0]]).expect_err("utf-8");
        assert!(e.to_string().contains("str is not valid UTF-8"), "{e}");
    }

    #[test]
    fn valid_job_submission_succeeds() {
        let inputs = z(&wire_encode(&[bin(b"x")]).expect("enc"));
        let s = Submission::parse(&z(ONE_TASK.as_bytes()), &inputs).expect("valid");
        assert_eq!(s.graph.num_tasks(), 1);
        assert_eq!(&*s.inputs[0], bin(b"x"));
    }

    #[test]
    fn submissions_of_one_graph_share_it_and_keep_their_own_inputs() {
        let first_inputs = z(&wire_encode(&[bin(b"x")]).expect("enc"));
        let first = Submission::parse(&z(ONE_TASK.as_bytes()), &first_inputs).expect("valid");
        let inputs = z(&wire_encode(&[bin(b"y")]).expect("enc"));
        let second = Submission::with_graph(Arc::clone(&first.graph), &inputs).expect("valid");
        assert!(Arc::ptr_eq(&first.graph, &second.graph));
        assert_eq!(
            (&*first.inputs[0], &*second.inputs[0]),
            (&bin(b"x")[..], &bin(b"y")[..])
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

    fn limits(
        max_graph_bytes: usize,
        max_input_bytes: usize,
        max_tasks: usize,
    ) -> SubmissionLimits {
        SubmissionLimits {
            max_graph_bytes,
            max_input_bytes,
            max_tasks,
        }
    }

    fn flat_json(n: usize) -> String {
        let task = r#"{"tdl_context":{"package":"p","task_func":"f"},"inputs":[],"outputs":[],"input_sources":null}"#;
        format!(
            r#"{{"schema_version":"0.1.0","tasks":[{}],"commit_task":null,"cleanup_task":null}}"#,
            vec![task; n].join(",")
        )
    }

    /// zstd without a content size in the frame header (as a streaming client would send).
    fn z_stream(b: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(b, 0).expect("stream")
    }

    #[test]
    fn input_decompression_is_bounded_by_max_input_bytes() {
        let frame = wire_encode(&[bin(&vec![0u8; 1 << 20])]).expect("enc");
        let g = z(ONE_TASK.as_bytes());
        for inputs in [z(&frame), z_stream(&frame)] {
            let e = Submission::parse_limited(&g, &inputs, &limits(1 << 20, 1 << 16, 10))
                .expect_err("big");
            assert_eq!(e.kind(), "InputsTooLarge");
            assert!(matches!(e, CoreError::LimitExceeded { .. }));
            assert!(
                e.to_string().contains("(limit max_input_bytes = 65536)"),
                "{e}"
            );
        }
        let e = Submission::parse_limited(&g, &z_stream(&frame), &limits(1 << 20, 1 << 16, 10))
            .expect_err("big");
        assert_eq!(
            e.to_string(),
            "graph inputs decompress to more than 65536 bytes (limit max_input_bytes = 65536)"
        );
        let e = Submission::parse_limited(&g, &z(&frame), &limits(1 << 20, 1 << 16, 10))
            .expect_err("big");
        assert_eq!(
            e.to_string(),
            format!(
                "graph inputs decompress to {} bytes (limit max_input_bytes = 65536)",
                frame.len()
            )
        );
        // Exactly at the limit is fine.
        Submission::parse_limited(&g, &z(&frame), &limits(1 << 20, frame.len(), 10)).expect("fits");
        let e = Submission::with_graph_limited(
            Arc::new(TaskGraph::from_json(ONE_TASK.as_bytes()).expect("g")),
            &z_stream(&frame),
            frame.len() - 1,
        )
        .expect_err("big");
        assert_eq!(e.kind(), "InputsTooLarge");
    }

    #[test]
    fn graph_decompression_is_bounded_by_max_graph_bytes() {
        let json = flat_json(100);
        for g in [z(json.as_bytes()), z_stream(json.as_bytes())] {
            let e = Submission::parse_limited(&g, &z(&[0, 0, 0, 0]), &limits(1000, 1 << 20, 1000))
                .expect_err("big");
            assert_eq!(e.kind(), "GraphTooLarge");
            assert!(
                e.to_string().contains("(limit max_graph_bytes = 1000)"),
                "{e}"
            );
        }
        let s = Submission::parse_limited(
            &z(json.as_bytes()),
            &z(&[0, 0, 0, 0]),
            &limits(json.len(), 1 << 20, 100),
        )
        .expect("exactly at both limits");
        assert_eq!(s.graph.num_tasks(), 100);
    }

    #[test]
    fn task_count_is_bounded_by_max_tasks_and_the_message_names_the_count() {
        let g = z(flat_json(250).as_bytes());
        let e = Submission::parse_limited(&g, &z(&[0, 0, 0, 0]), &limits(1 << 20, 1 << 20, 100))
            .expect_err("too many");
        assert_eq!(e.kind(), "TooManyTasks");
        assert_eq!(
            e.to_string(),
            "the graph has 250 tasks, above the limit of 100 (max_tasks)"
        );
        // Tasks past the limit are only counted, never interpreted.
        let past = format!(
            r#"{{"schema_version":"0.1.0","tasks":[{},{{"x":1}}],"commit_task":null,"cleanup_task":null}}"#,
            r#"{"tdl_context":{"package":"p","task_func":"f"},"inputs":[],"outputs":[],"input_sources":null}"#
        );
        let e = TaskGraph::from_json_limited(past.as_bytes(), 1).expect_err("too many");
        assert_eq!(
            e.to_string(),
            "the graph has 2 tasks, above the limit of 1 (max_tasks)"
        );
        assert_eq!(
            TaskGraph::from_json_limited(past.as_bytes(), 2)
                .expect_err("bad task")
                .kind(),
            "MalformedGraph"
        );
        // A rule broken before the limit is reported as such.
        let e = TaskGraph::from_json_limited(
            br#"{"schema_version":"0.1.0","tasks":[{"tdl_context":{"package":"p","task_func":"f"},"inputs":[],"outputs":[],"input_sources":[{"task_idx":5,"position":0}]}],"commit_task":null,"cleanup_task":null}"#,
            10,
        )
        .expect_err("bad source");
        assert_eq!(e.kind(), "InvalidTaskInputs");
    }

    #[test]
    fn a_frame_claiming_more_inputs_than_the_graph_has_is_refused_before_decoding() {
        let g = z(ONE_TASK.as_bytes());
        let e = Submission::parse(&g, &z(&[0xff, 0xff, 0xff, 0x7f])).expect_err("count");
        assert_eq!(e.kind(), "TaskGraphInputSizeMismatch");
        assert!(e.to_string().contains("2147483647 were given"), "{e}");
    }
}
