//! The native CPU backend.
//!
//! A graph is compiled once per batch size into a network function generated
//! by Cranelift (`jit.rs`) that calls each layer's kernel directly, with every
//! shape, stride and arena address fixed (`lower.rs`), over one arena laid out
//! by the memory plan. Convolutions and linear layers are GEMMs with weights
//! packed once, at load, for the AVX2 micro-kernel (`gemm.rs`, `conv/`);
//! their epilogues run on each block of output while it is in cache.
//! Activations are generated F32X4 code, with eight-lane AVX2 twins
//! (`vmath.rs`) that CPUs with AVX2 run. Work is split across a persistent
//! pool of threads (`pool.rs`): each layer's units are claimed from its
//! `conv::WorkQueue`, and a thread moves to the next layer once all of them
//! are done (no barrier: a descheduled thread holds up only the chunk it
//! holds).
//!
//! Layout of this folder: `gemm.rs` (micro-kernel, weight packing), `conv/`
//! (GEMM driver; `gather.rs` implicit im2col, `epilogue.rs` epilogues,
//! `token.rs` token-major products), `depthwise.rs` (depthwise
//! convolution), `grouped.rs` (grouped convolutions with few channels a
//! group), `kernels.rs` (every other layer), `lower.rs` (graph → kernels), `jit.rs` (Cranelift), `pool.rs`
//! (threads, barrier, FTZ/DAZ), `memory.rs` (arena and weight store, with
//! optional guard pages), `vmath.rs` (AVX2 activations), `vmath16.rs`
//! (their AVX-512 twins for the exp-based ones).

pub mod conv;
pub mod depthwise;
pub mod gemm;
pub mod grouped;
pub mod jit;
pub mod kernels;
pub mod lower;
pub mod memory;
pub mod pool;
#[cfg(target_arch = "x86_64")]
pub mod vmath;
#[cfg(target_arch = "x86_64")]
pub mod vmath16;

use crate::weights::{HostTensor, Weights};
use memory::Region;
use netc_compiler::ir::{Activation, FusedBase, Graph, NodeIndex, Op};
use netc_compiler::memory_plan::{self, MemoryPlan};
use netc_grammar::Diagnostic;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// An element-wise activation as the kernels apply it.
#[derive(Clone, Copy)]
pub enum Act {
    /// max(x, 0), inlined.
    Relu,
    /// min(max(x, 0), 6), inlined.
    Relu6,
    /// A smooth activation (`None`: exp, for softmax): its generated kernel,
    /// or on CPUs with AVX2 and FMA its eight-lane twin in `vmath.rs`.
    Generated(Option<Activation>, jit::ActFn),
}

impl std::fmt::Debug for Act {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Act::Relu => f.write_str("relu"),
            Act::Relu6 => f.write_str("relu6"),
            Act::Generated(a, _) => f.write_str(a.map_or("exp", |a| a.name())),
        }
    }
}

impl Act {
    /// Whether this is one of the exp-based activations (sigmoid, SiLU,
    /// tanh, the GELUs): long dependent chains per value, worth a pass of
    /// their own over finished rows (see `conv::Problem::deferred_act`).
    pub fn is_smooth(self) -> bool {
        use Activation::*;
        matches!(
            self,
            Act::Generated(Some(Sigmoid | Silu | Tanh | Gelu | GeluTanh), _)
        )
    }

    /// The activation as the fused GEMM kernels apply it to their registers
    /// (`None` for exp, which is softmax's and never an epilogue's).
    pub fn fusable(self) -> Option<Activation> {
        match self {
            Act::Relu => Some(Activation::Relu),
            Act::Relu6 => Some(Activation::Relu6),
            Act::Generated(a, _) => a,
        }
    }

    /// Applies the activation in place.
    #[inline(always)]
    // `clamp` would return NaN for NaN, where these map it to 0 like before.
    #[allow(clippy::manual_clamp)]
    pub fn apply(self, x: &mut [f32]) {
        match self {
            // `max`/`min` against a constant become one `maxps`/`minps` (NaN
            // maps to 0 either way); a conditional assignment instead compiles
            // to a masked store that stalls the next load.
            Act::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
            Act::Relu6 => x.iter_mut().for_each(|v| *v = v.max(0.0).min(6.0)),
            Act::Generated(a, f) => {
                #[cfg(target_arch = "x86_64")]
                if vmath::available() {
                    // SAFETY: AVX2 and FMA checked.
                    unsafe { vmath::apply(a, x) };
                    return;
                }
                let _ = a;
                // SAFETY: the kernel reads and writes `len` floats.
                unsafe { f(x.as_ptr(), x.as_mut_ptr(), x.len()) }
            }
        }
    }
}

/// Weights in the form the kernels read, in one store: raw tensors, GEMM
/// weights packed per group, and batch norms folded to scale and shift.
pub struct Prepared {
    store: Region,
    raw: HashMap<(NodeIndex, usize), usize>,
    packed: HashMap<(NodeIndex, usize), usize>,
    /// Which packed offsets hold token-major (B-operand) panels.
    token_major: std::collections::HashSet<usize>,
    /// Pixel-major convolutions' weights as B-operand panels
    /// (`conv/pixels.rs`), instead of their channel-major packing.
    pixel_cols: HashMap<(NodeIndex, usize), usize>,
    /// Winograd convolutions' transformed weights (`conv/winograd.rs`).
    winograd: HashMap<NodeIndex, usize>,
    /// Directly computed grouped convolutions' weights (`grouped.rs`).
    grouped: HashMap<NodeIndex, usize>,
    affine: HashMap<NodeIndex, (Vec<f32>, Option<Vec<f32>>)>,
}

// SAFETY: the store is written once, at preparation, and only read afterwards.
unsafe impl Send for Prepared {}
unsafe impl Sync for Prepared {}

impl Prepared {
    fn new(g: &Graph, w: &Weights, guard: bool, threads: usize) -> Result<Prepared, Diagnostic> {
        /// What goes into the store.
        enum Job<'a> {
            Copy(&'a [f32]),
            Pack(&'a [f32], usize, usize),
            PackCols(&'a [f32], usize, usize),
            Winograd(&'a [f32], usize, usize),
            Grouped(&'a [f32], usize, usize),
        }
        let mut jobs: Vec<Job<'_>> = Vec::new();
        // Linear layers and attention projections are token-major products:
        // with the AVX2 kernel their weights are its B operand (see
        // `conv/token.rs`), elsewhere its A operand like a convolution's.
        let cols = gemm::Kernel::detect() == gemm::Kernel::Avx2Fma;
        let pack_token_major = |w, m, k| {
            if cols {
                Job::PackCols(w, m, k)
            } else {
                Job::Pack(w, m, k)
            }
        };
        let mut raw = HashMap::new();
        let mut packed = HashMap::new();
        let mut affine = HashMap::new();
        let mut pixel_cols = HashMap::new();
        let mut winograd = HashMap::new();
        let mut grouped_weights = HashMap::new();
        for id in g.topo_order() {
            let node = g.node(id);
            let get = |i: usize| -> Result<&HostTensor, Diagnostic> {
                let key = &node.params[i].key;
                w.get(key).ok_or_else(|| {
                    Diagnostic::new("netc::weights", format!("no weights for `{key}`"))
                        .label(node.span, "this layer")
                })
            };
            // Which slots the kernels read packed (and never raw).
            let mut packed_slots: Vec<usize> = Vec::new();
            match &node.op {
                Op::Conv2d { groups, window, .. }
                | Op::Fused {
                    base: FusedBase::Conv2d { groups, window, .. },
                    ..
                } => {
                    let wt = get(0)?;
                    let (cout, k) = (wt.shape[0], wt.shape[1..].iter().product::<usize>());
                    let cg = cout / groups;
                    // Pixel-major convolutions read their weights as B
                    // panels only: a batch too large to pad at once runs
                    // sample by sample, and inputs whose one sample is too
                    // large to pad stay channel-major.
                    // Winograd convolutions read only their transformed
                    // weights.
                    let input = g.node(g.operands(id)[0]).shape.per_sample();
                    let output = node.shape.per_sample();
                    let out_hw = [output[1], output[2]];
                    let pixel = conv::pixel_major(cg, k, window.kernel, window.stride)
                        && conv::pads_one_sample(input[0] / groups, [input[1], input[2]], window);
                    if conv::winograd(*groups, wt.shape[1], cout, window, out_hw) {
                        winograd.insert(id, jobs.len());
                        jobs.push(Job::Winograd(&wt.data, cout, wt.shape[1]));
                        packed_slots.push(0);
                    } else if grouped::takes(*groups, wt.shape[1], cg, window) {
                        grouped_weights.insert(id, jobs.len());
                        jobs.push(Job::Grouped(&wt.data, cout, k));
                        packed_slots.push(0);
                    } else if wt.shape[1] > 1 || wt.shape[2] * wt.shape[3] == 1 {
                        // (Depthwise convolutions read their weights raw.)
                        for grp in 0..*groups {
                            let w = &wt.data[grp * cg * k..(grp + 1) * cg * k];
                            if pixel {
                                pixel_cols.insert((id, grp), jobs.len());
                                jobs.push(Job::PackCols(w, cg, k));
                            } else {
                                packed.insert((id, grp), jobs.len());
                                jobs.push(Job::Pack(w, cg, k));
                            }
                        }
                        packed_slots.push(0);
                    }
                }
                Op::Linear { .. }
                | Op::Fused {
                    base: FusedBase::Linear { .. },
                    ..
                } => {
                    let wt = get(0)?;
                    packed.insert((id, 0), jobs.len());
                    jobs.push(pack_token_major(&wt.data, wt.shape[0], wt.shape[1]));
                    packed_slots.push(0);
                }
                Op::SelfAttention { bias, .. } => {
                    for slot in [0, if *bias { 2 } else { 1 }] {
                        let wt = get(slot)?;
                        packed.insert((id, slot), jobs.len());
                        jobs.push(pack_token_major(&wt.data, wt.shape[0], wt.shape[1]));
                        packed_slots.push(slot);
                    }
                }
                Op::BatchNorm { eps } => {
                    let (gm, bt, mean, var) = (get(0)?, get(1)?, get(2)?, get(3)?);
                    let scale: Vec<f32> = gm
                        .data
                        .iter()
                        .zip(&var.data)
                        .map(|(g, v)| (*g as f64 / (*v as f64 + eps).sqrt()) as f32)
                        .collect();
                    let shift = bt
                        .data
                        .iter()
                        .zip(&mean.data)
                        .zip(&scale)
                        .map(|((b, m), s)| b - m * s)
                        .collect();
                    affine.insert(id, (scale, Some(shift)));
                }
                Op::LayerScale { .. } => {
                    affine.insert(id, (get(0)?.data.clone(), None));
                }
                _ => {}
            }
            for i in 0..node.params.len() {
                if !packed_slots.contains(&i) {
                    raw.insert((id, i), jobs.len());
                    jobs.push(Job::Copy(&get(i)?.data));
                }
            }
        }
        // One allocation, so guard pages can surround all of it; packed
        // straight into place.
        let len = |j: &Job<'_>| match j {
            Job::Copy(d) => d.len(),
            Job::Pack(_, m, k) => gemm::packed_len(*m, *k),
            Job::PackCols(_, m, k) => gemm::packed_cols_len(*m, *k),
            Job::Winograd(_, m, c) => conv::winograd::packed_len(*m, *c),
            Job::Grouped(_, m, k) => grouped::packed_len(*m, *k),
        };
        // Packed panels start on a 64-byte boundary (the store's base is
        // page-aligned where it is large), so the kernels' whole-vector
        // weight loads never straddle cache lines, whatever raw tensors of
        // odd lengths come before them.
        let mut offsets = Vec::with_capacity(jobs.len());
        let mut total = 0usize;
        for j in &jobs {
            if !matches!(j, Job::Copy(_)) {
                total = total.next_multiple_of(16);
            }
            offsets.push(total);
            total += len(j);
        }
        let mut store =
            Region::new(total, guard).map_err(|e| Diagnostic::new("netc::backend", e))?;
        let cols_at: Vec<usize> = jobs
            .iter()
            .zip(&offsets)
            .filter(|(j, _)| matches!(j, Job::PackCols(..)))
            .map(|(_, &at)| at)
            .collect();
        // Each job's stretch of the store, cut off in order (offsets
        // ascend), then the jobs dealt to the threads largest first, each to
        // the least loaded: packing and Winograd's weight transform are most
        // of the compile time (ResNet-50 179 ms on one thread).
        /// A job and the part of the store it writes.
        type Piece<'j, 'd> = (&'j Job<'j>, &'d mut [f32]);
        let mut pieces: Vec<Piece<'_, '_>> = Vec::with_capacity(jobs.len());
        let mut rest = store.as_mut_slice();
        let mut consumed = 0;
        for (j, &at) in jobs.iter().zip(&offsets) {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(at - consumed);
            let (piece, tail) = tail.split_at_mut(len(j));
            pieces.push((j, piece));
            rest = tail;
            consumed = at + len(j);
        }
        pieces.sort_by_key(|(_, d)| std::cmp::Reverse(d.len()));
        let mut shares: Vec<(usize, Vec<Piece<'_, '_>>)> =
            (0..threads.max(1)).map(|_| (0, Vec::new())).collect();
        for piece in pieces {
            let share = shares.iter_mut().min_by_key(|(load, _)| *load).unwrap();
            share.0 += piece.1.len();
            share.1.push(piece);
        }
        let run = |share: Vec<Piece<'_, '_>>| {
            for (j, data) in share {
                match j {
                    Job::Copy(d) => data.copy_from_slice(d),
                    Job::Pack(d, m, k) => gemm::pack_weights_into(d, *m, *k, data),
                    Job::PackCols(d, m, k) => gemm::pack_weights_cols_into(d, *m, *k, data),
                    Job::Winograd(d, m, c) => conv::winograd::pack_weights_into(d, *m, *c, data),
                    Job::Grouped(d, m, k) => grouped::pack_weights_into(d, *m, *k, data),
                }
            }
        };
        std::thread::scope(|sc| {
            let mut shares = shares.into_iter().map(|(_, s)| s);
            let first = shares.next().unwrap_or_default();
            for share in shares {
                sc.spawn(move || run(share));
            }
            run(first);
        });
        let fix = |m: HashMap<(NodeIndex, usize), usize>| {
            m.into_iter().map(|(k, i)| (k, offsets[i])).collect()
        };
        Ok(Prepared {
            raw: fix(raw),
            packed: fix(packed),
            pixel_cols: pixel_cols
                .into_iter()
                .map(|(k, i)| (k, offsets[i]))
                .collect(),
            winograd: winograd.into_iter().map(|(k, i)| (k, offsets[i])).collect(),
            grouped: grouped_weights
                .into_iter()
                .map(|(k, i)| (k, offsets[i]))
                .collect(),
            token_major: cols_at.into_iter().collect(),
            affine,
            store,
        })
    }

    fn at(&self, offset: usize) -> *const f32 {
        // SAFETY: offsets were computed inside the store.
        unsafe { self.store.ptr().add(offset) }
    }

    /// Parameter slot `slot` of `node`, as stored.
    pub fn raw(&self, node: NodeIndex, slot: usize) -> *const f32 {
        self.at(self.raw[&(node, slot)])
    }

    /// Packed GEMM weights of `node` (group or slot `i`).
    pub fn packed(&self, node: NodeIndex, i: usize) -> *const f32 {
        self.at(self.packed[&(node, i)])
    }

    /// A token-major product's weights as a [`conv::Problem`] takes them:
    /// `(a, a_cols)`, one of them null (see [`conv::Problem::a_cols`]).
    pub fn token_major(&self, node: NodeIndex, i: usize) -> (*const f32, *const f32) {
        let at = self.packed[&(node, i)];
        if self.token_major.contains(&at) {
            (std::ptr::null(), self.at(at))
        } else {
            (self.at(at), std::ptr::null())
        }
    }

    /// A pixel-major convolution candidate's weights (group `grp`) packed
    /// as B-operand panels ([`conv::pixel_major`]); None for other nodes.
    pub fn pixel_cols(&self, node: NodeIndex, grp: usize) -> Option<*const f32> {
        self.pixel_cols.get(&(node, grp)).map(|&at| self.at(at))
    }

    /// A Winograd convolution's transformed, packed weights
    /// ([`conv::winograd`]); None for other nodes.
    pub fn winograd(&self, node: NodeIndex) -> Option<*const f32> {
        self.winograd.get(&node).map(|&at| self.at(at))
    }

    /// A directly computed grouped convolution's weights in its channel
    /// blocks ([`grouped::takes`]); None for other nodes.
    pub fn grouped(&self, node: NodeIndex) -> Option<*const f32> {
        self.grouped.get(&node).map(|&at| self.at(at))
    }

    /// Per-channel scale and shift of a batch norm or layer scale.
    pub fn affine(&self, node: NodeIndex) -> (&[f32], Option<&[f32]>) {
        let (s, t) = &self.affine[&node];
        (s, t.as_deref())
    }
}

/// One batch size's compiled form.
struct Compiled {
    /// Owns the memory every descriptor and the network function point into.
    _arena: Region,
    lowered: lower::Lowered,
    generated: jit::Generated,
}

// SAFETY: used only under the program's mutex.
unsafe impl Send for Compiled {}

/// Options for [`CpuProgram::new`].
#[derive(Debug, Clone, Copy)]
pub struct CpuOptions {
    /// Threads per run (the caller included).
    pub threads: usize,
    /// Surround the arena and the weights with inaccessible pages (a test mode:
    /// any out-of-bounds access faults).
    pub guard_pages: bool,
}

impl Default for CpuOptions {
    fn default() -> Self {
        CpuOptions {
            threads: 2,
            guard_pages: false,
        }
    }
}

/// Time spent preparing a program.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompileTimes {
    /// Packing weights.
    pub pack_ms: f64,
    /// Generating the activation kernels.
    pub activations_ms: f64,
}

/// A graph compiled for the CPU. `run` may be called from several threads;
/// runs are serialized (each already uses the whole pool).
pub struct CpuProgram {
    graph: Graph,
    plan: MemoryPlan,
    prepared: Prepared,
    acts: HashMap<Activation, Act>,
    exp: Act,
    _act_code: jit::Jit,
    pool: pool::Pool,
    options: CpuOptions,
    compiled: Mutex<HashMap<usize, Compiled>>,
    times: CompileTimes,
}

fn backend_error(e: String) -> Diagnostic {
    Diagnostic::new(
        "netc::backend",
        format!("the CPU backend cannot compile this graph: {e}"),
    )
    .help("run it with `--backend candle`; please report the model")
}

/// A layer's share of a profiled run.
#[derive(Debug, Clone)]
pub struct ProfileEntry {
    /// The node.
    pub node: String,
    /// Its op.
    pub op: String,
    /// Kernel kind.
    pub kernel: &'static str,
    /// Wall time, milliseconds.
    pub ms: f64,
    /// Multiply-accumulates of this layer for the whole batch (0 for ops
    /// that count none), so that callers can report GFLOP/s per layer.
    pub macs: u64,
}

impl CpuProgram {
    /// Prepares `graph` with `weights` (validated against it, transforms applied).
    pub fn new(graph: &Graph, weights: &Weights, options: CpuOptions) -> Result<Self, Diagnostic> {
        let t = Instant::now();
        let prepared = Prepared::new(graph, weights, options.guard_pages, options.threads)?;
        let pack_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let (code, fns) = jit::compile_activations().map_err(backend_error)?;
        let activations_ms = t.elapsed().as_secs_f64() * 1e3;
        let mut acts = HashMap::new();
        let mut exp = None;
        for (a, f) in fns {
            match a {
                Some(a) => {
                    acts.insert(a, Act::Generated(Some(a), f));
                }
                None => exp = Some(Act::Generated(None, f)),
            }
        }
        let threads = options.threads.max(1);
        Ok(CpuProgram {
            graph: graph.clone(),
            plan: memory_plan::plan(graph),
            prepared,
            acts,
            exp: exp.ok_or_else(|| backend_error("no exp kernel".into()))?,
            _act_code: code,
            pool: pool::Pool::new(threads),
            options,
            compiled: Mutex::new(HashMap::new()),
            times: CompileTimes {
                pack_ms,
                activations_ms,
            },
        })
    }

    /// The graph this program runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Applies `a`'s generated (Cranelift) kernel to `x` in place, the path of
    /// CPUs without AVX2 (for accuracy tests; [`CpuProgram::apply_activation`]
    /// runs what this CPU runs).
    pub fn apply_generated_activation(&self, a: Activation, x: &mut [f32]) {
        match self.acts.get(&a) {
            // SAFETY: the kernel reads and writes `len` floats.
            Some(Act::Generated(_, f)) => unsafe { f(x.as_ptr(), x.as_mut_ptr(), x.len()) },
            _ => self.apply_activation(a, x),
        }
    }

    /// Applies the program's kernel for `a` to `x` in place (for accuracy tests).
    pub fn apply_activation(&self, a: Activation, x: &mut [f32]) {
        let act = match a {
            Activation::Relu => Act::Relu,
            Activation::Relu6 => Act::Relu6,
            other => self.acts[&other],
        };
        act.apply(x)
    }

    /// Time spent in [`CpuProgram::new`].
    pub fn compile_times(&self) -> CompileTimes {
        self.times
    }

    fn compile(&self, batch: usize) -> Result<Compiled, Diagnostic> {
        let floats = (self.plan.arena as usize / 4)
            .checked_mul(batch)
            .and_then(|f| f.checked_add(lower::scratch_floats(&self.graph, batch)))
            .filter(|f| *f <= (1usize << 40) / 4)
            .ok_or_else(|| backend_error(format!("the arena for batch {batch} is too large")))?;
        let mut arena = Region::new(floats, self.options.guard_pages).map_err(backend_error)?;
        let ctx = lower::Ctx {
            graph: &self.graph,
            plan: &self.plan,
            prepared: &self.prepared,
            arena: arena.as_mut_slice().as_mut_ptr(),
            arena_len: floats,
            batch,
            acts: &self.acts,
            exp: self.exp,
        };
        let lowered = lower::lower(&ctx).map_err(|e| {
            let d = backend_error(e.message);
            match e.node {
                Some(id) => {
                    let node = self.graph.node(id);
                    d.label(node.span, format!("`{}` comes from here", node.name))
                }
                None => d,
            }
        })?;
        let calls: Vec<jit::Call> = lowered
            .kernels
            .iter()
            .map(|k| {
                let (func, desc) = k.entry();
                jit::Call { func, desc }
            })
            .collect();
        let generated = jit::compile_network(&calls).map_err(backend_error)?;
        Ok(Compiled {
            _arena: arena,
            lowered,
            generated,
        })
    }

    /// Compiles for `batch` now (otherwise the first run of a batch size does),
    /// returning the milliseconds it took.
    pub fn prepare(&self, batch: usize) -> Result<f64, Diagnostic> {
        let t = Instant::now();
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::hash_map::Entry::Vacant(e) = compiled.entry(batch) {
            e.insert(self.compile(batch)?);
        }
        Ok(t.elapsed().as_secs_f64() * 1e3)
    }

    fn check_inputs(&self, inputs: &[HostTensor]) -> Result<usize, Diagnostic> {
        crate::backend::check_inputs(&self.graph, inputs)
    }

    /// Runs the network on host tensors (one per graph input, in order; any batch size).
    pub fn run(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>, Diagnostic> {
        self.run_inner(inputs, None)
    }

    /// Runs once, layer by layer, timing each (all threads take part in every layer).
    pub fn profile(&self, inputs: &[HostTensor]) -> Result<Vec<ProfileEntry>, Diagnostic> {
        let mut entries = Vec::new();
        self.run_inner(inputs, Some(&mut entries))?;
        Ok(entries)
    }

    fn run_inner(
        &self,
        inputs: &[HostTensor],
        profile: Option<&mut Vec<ProfileEntry>>,
    ) -> Result<Vec<HostTensor>, Diagnostic> {
        let batch = self.check_inputs(inputs)?;
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::hash_map::Entry::Vacant(e) = compiled.entry(batch) {
            e.insert(self.compile(batch)?);
        }
        let c = &compiled[&batch];
        c.lowered
            .kernels
            .iter()
            .for_each(kernels::Kernel::reset_work_queues);
        for (inp, t) in self.graph.inputs.iter().zip(inputs) {
            let v = c.lowered.vals[&inp.node];
            let per = t.data.len() / batch;
            for n in 0..batch {
                // SAFETY: the input's value holds `batch` samples of `per` floats.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        t.data[n * per..].as_ptr(),
                        v.ptr.add(n * v.stride),
                        per,
                    )
                };
            }
        }
        match profile {
            None => {
                let network = c.generated.network;
                let threads = self.pool.threads();
                // SAFETY: the network function and everything it points to live
                // in `c`, which is borrowed (under the lock) for the whole run.
                self.pool
                    .run(Arc::new(move |tid| unsafe { network(tid, threads) }));
            }
            Some(entries) => {
                // One job for the whole run, the threads meeting at a barrier
                // after each layer so that each layer is timed from a common
                // start (the network function has no barrier: a layer ends
                // when its units are done). A job per layer would add the
                // pool's wake-up (tens of microseconds, erratic) to every
                // layer's time.
                let layers: Vec<(usize, usize)> = c
                    .lowered
                    .kernels
                    .iter()
                    .map(|k| {
                        let (f, d) = k.entry();
                        (f as usize, d as usize)
                    })
                    .collect();
                let threads = self.pool.threads();
                let barrier = Arc::new(pool::Barrier::new(threads));
                let times = Arc::new(Mutex::new(Vec::with_capacity(layers.len())));
                let shared = times.clone();
                self.pool.run(Arc::new(move |tid| {
                    let mut own = Vec::with_capacity(layers.len());
                    barrier.wait();
                    for &(f, d) in &layers {
                        let t = Instant::now();
                        // SAFETY: as above; `d` is the kernel's descriptor.
                        let f: jit::LayerFn = unsafe { std::mem::transmute(f) };
                        unsafe { f(d as *const u8, tid, threads) };
                        barrier.wait();
                        own.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    if tid == 0 {
                        *shared.lock().unwrap_or_else(|e| e.into_inner()) = own;
                    }
                }));
                let times = std::mem::take(&mut *times.lock().unwrap_or_else(|e| e.into_inner()));
                for ((k, &node), ms) in c.lowered.kernels.iter().zip(&c.lowered.origins).zip(times)
                {
                    let n = self.graph.node(node);
                    let operands: Vec<_> = self
                        .graph
                        .operands(node)
                        .iter()
                        .map(|o| &self.graph.node(*o).shape)
                        .collect();
                    let macs = netc_compiler::ops::macs(&n.op, &operands, &n.shape) * batch as u64;
                    entries.push(ProfileEntry {
                        node: n.name.clone(),
                        op: n.op.mnemonic().to_string(),
                        kernel: k.name(),
                        ms,
                        macs,
                    });
                }
            }
        }
        Ok(self
            .graph
            .outputs
            .iter()
            .map(|o| {
                let v = c.lowered.vals[&o.node];
                let node = self.graph.node(o.node);
                let per = node.shape.numel_per_sample() as usize;
                let mut shape = node.shape.per_sample();
                let samples = if node.shape.has_batch() {
                    shape.insert(0, batch);
                    batch
                } else {
                    shape = node
                        .shape
                        .0
                        .iter()
                        .map(|d| match d {
                            netc_compiler::ir::Dim::Known(k) => *k,
                            netc_compiler::ir::Dim::Batch => batch,
                        })
                        .collect();
                    1
                };
                let mut data = Vec::with_capacity(per * samples);
                for n in 0..samples {
                    // SAFETY: the output's value holds its samples.
                    data.extend_from_slice(unsafe {
                        std::slice::from_raw_parts(v.ptr.add(n * v.stride), per)
                    });
                }
                HostTensor { shape, data }
            })
            .collect())
    }
}
