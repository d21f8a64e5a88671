// A graph pass: a party starts receiving a message in bursts as the call goes, not all at once.
//
// TensorFlow's partitioner turns every cross-device edge into a _Send/_Recv pair. A _Recv has
// no inputs, so a party's executor starts every receive of a call at the call's start, and each
// one holds a RecvTensor RPC open on both parties until its tensor is sent: ~50 KiB the pair
// (benchmarks/pending_transfers.py), ~0.4 GiB per call for a party of a SmolLM2 prefill
// (~11,000 receives). This pass runs after TensorFlow partitions a function (in the process that
// instantiates it: the client) and gives each receive between two party tasks one control input
// on its party, so that its RPC starts in one of kBursts bursts spread over the call:
//   1. depth(n): the longest path to node n over every partition's edges and each _Send ->
//      _Recv pair, i.e. the whole function's dependency graph;
//   2. X: of the nodes all consumers of the receive R also wait for on that party (receives,
//      constants and arguments left out), the deepest; none: R stays at the call's start;
//   3. the control input: X's ancestor at the last burst boundary at or before depth(X)
//      (multiples of max depth / kBursts), found by going up through the deepest input.
// Receives whose consumers sit in one span of depth so share a control input (the residual
// stream's node at the boundary) and start together. Starting them one by one as each is
// reached costs a RecvTensor RPC's start while the parties compute, which on this 2-core machine
// made a next SmolLM2 token 25% slower; a burst costs what the call's initial burst did.
// No node or message is added.
//
// Deadlock-free: the control input is an ancestor of an input X of every consumer C of R, so it
// is not downstream of R (that path would run through some consumer C, making X -> C a cycle),
// and a path through other receives' new control edges can be replaced by the original edges
// into their consumers.
//
// TF_PUMA_RECEIVE_IN_BURSTS=0 in the instantiating process turns the pass off (TensorFlow's
// schedule, for comparisons).
//
// TensorFlow's own build defines NDEBUG, and tensorflow::EdgeSet has a member only without it:
// this file reads a Graph's edges, so it must see TensorFlow's layout whatever our flags are.
#ifndef NDEBUG
#define NDEBUG
#endif
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "tensorflow/core/common_runtime/optimization_registry.h"
#include "tensorflow/core/framework/node_def_util.h"
#include "tensorflow/core/graph/graph.h"
#include "tensorflow/core/util/device_name_utils.h"

namespace tf_puma {

using ::tensorflow::DeviceNameUtils;
using ::tensorflow::Edge;
using ::tensorflow::GetNodeAttr;
using ::tensorflow::Graph;
using ::tensorflow::GraphOptimizationPass;
using ::tensorflow::GraphOptimizationPassOptions;
using ::tensorflow::Node;
using ::tensorflow::OptimizationPassRegistry;

namespace {

constexpr char kPartyJob[] = "puma";  // tf_puma.cluster.PARTY_JOB

std::atomic<int64_t> receives_delayed{0};   // given control inputs, over the process's life
std::atomic<int64_t> receives_at_start{0};  // party-to-party receives left as they were
std::atomic<int64_t> burst_starts{0};       // distinct control inputs given (per partition)

// Receives start in this many bursts over a call, at most (README: the measured choice).
constexpr int64_t kBursts = 32;

using Depths = absl::flat_hash_map<const Node*, int64_t>;

int64_t DepthOf(const Depths& depth, const Node* node) {
  const auto it = depth.find(node);
  return it == depth.end() ? 0 : it->second;
}

// The task of `device` when it is a party device, else -1.
int PartyTask(const std::string& device) {
  DeviceNameUtils::ParsedName parsed;
  if (!DeviceNameUtils::ParseFullName(device, &parsed) || !parsed.has_job ||
      parsed.job != kPartyJob || !parsed.has_task) {
    return -1;
  }
  return parsed.task;
}

// Whether `node` waits for anything (a constant or an argument is there from the call's start).
bool HasOpInputs(const Node* node) {
  for (const Edge* in : node->in_edges()) {
    if (in->src()->IsOp()) return true;
  }
  return false;
}

// Nodes every consumer of `recv` waits for besides it, receives excluded (waiting for another
// receive would put two messages of one round in sequence). Empty: no such node.
std::vector<Node*> CommonOtherInputs(const Node* recv) {
  bool first = true;
  absl::flat_hash_set<Node*> common;
  for (const Edge* out : recv->out_edges()) {
    const Node* consumer = out->dst();
    if (!consumer->IsOp()) return {};  // the sink: a receive nothing waits for
    absl::flat_hash_set<Node*> inputs;
    for (const Edge* in : consumer->in_edges()) {
      Node* src = in->src();
      if (src != recv && src->IsOp() && !src->IsRecv() && HasOpInputs(src)) inputs.insert(src);
    }
    if (first) {
      common = std::move(inputs);
      first = false;
    } else {
      absl::erase_if(common, [&inputs](Node* n) { return !inputs.contains(n); });
    }
    if (common.empty()) return {};
  }
  return {common.begin(), common.end()};
}

// Each node's depth in the whole function: the longest path to it over every partition's edges
// and each _Send -> _Recv pair (matched by tensor_name).
Depths GlobalDepths(const std::vector<Graph*>& graphs) {
  absl::flat_hash_map<std::string, std::vector<Node*>> receives_of;
  for (Graph* graph : graphs) {
    for (Node* node : graph->op_nodes()) {
      std::string name;
      if (node->IsRecv() && GetNodeAttr(node->attrs(), "tensor_name", &name).ok()) {
        receives_of[name].push_back(node);
      }
    }
  }
  absl::flat_hash_map<const Node*, int> waiting;
  Depths depth;
  std::vector<Node*> ready;
  absl::flat_hash_map<const Node*, std::vector<Node*>> sent_to;
  for (Graph* graph : graphs) {
    for (Node* node : graph->op_nodes()) {
      std::string name;
      if (node->IsSend() && GetNodeAttr(node->attrs(), "tensor_name", &name).ok()) {
        auto it = receives_of.find(name);
        if (it != receives_of.end()) {
          sent_to[node] = it->second;
          for (Node* recv : it->second) ++waiting[recv];
        }
      }
      for (const Edge* in : node->in_edges()) {
        if (in->src()->IsOp()) ++waiting[node];
      }
    }
  }
  for (Graph* graph : graphs) {
    for (Node* node : graph->op_nodes()) {
      if (waiting[node] == 0) ready.push_back(node);
    }
  }
  auto reach = [&](const Node* from, Node* to) {
    depth[to] = std::max(depth[to], depth[from] + 1);
    if (--waiting[to] == 0) ready.push_back(to);
  };
  while (!ready.empty()) {
    Node* node = ready.back();
    ready.pop_back();
    depth.try_emplace(node, 0);
    for (const Edge* out : node->out_edges()) {
      if (out->dst()->IsOp()) reach(node, out->dst());
    }
    auto it = sent_to.find(node);
    if (it != sent_to.end()) {
      for (Node* recv : it->second) reach(node, recv);
    }
  }
  return depth;
}

// X's ancestor at the last burst boundary at or before depth(X), up through the deepest input.
Node* BurstStart(Node* node, const Depths& depth, int64_t span) {
  const int64_t boundary = (DepthOf(depth, node) / span) * span;
  while (DepthOf(depth, node) > boundary) {
    Node* deepest = nullptr;
    for (const Edge* in : node->in_edges()) {
      if (in->src()->IsOp() &&
          (deepest == nullptr || DepthOf(depth, in->src()) > DepthOf(depth, deepest))) {
        deepest = in->src();
      }
    }
    if (deepest == nullptr) break;
    node = deepest;
  }
  return node;
}

class ReceiveInBursts : public GraphOptimizationPass {
 public:
  absl::Status Run(const GraphOptimizationPassOptions& options) override {
    if (options.partition_graphs == nullptr) return absl::OkStatus();
    const char* off = std::getenv("TF_PUMA_RECEIVE_IN_BURSTS");
    if (off != nullptr && std::string(off) == "0") return absl::OkStatus();
    std::vector<Graph*> graphs;
    bool has_party = false;
    for (auto& [device, graph] : *options.partition_graphs) {
      if (graph == nullptr) continue;
      graphs.push_back(graph.get());
      has_party |= PartyTask(device) >= 0;
    }
    if (!has_party) return absl::OkStatus();
    const Depths depth = GlobalDepths(graphs);
    int64_t max_depth = 1;
    for (const auto& [node, d] : depth) max_depth = std::max(max_depth, d);
    // boundaries 0, span, 2 span, ..: at most kBursts + 1 of them
    const int64_t span = (max_depth + kBursts - 1) / kBursts;
    for (auto& [device, graph] : *options.partition_graphs) {
      const int task = PartyTask(device);
      if (task >= 0 && graph != nullptr) ScheduleReceives(task, graph.get(), depth, span);
    }
    return absl::OkStatus();
  }

 private:
  static void ScheduleReceives(int task, Graph* graph, const Depths& depth, int64_t span) {
    std::vector<Node*> receives;
    for (Node* node : graph->op_nodes()) {
      if (node->IsRecv() && !HasOpInputs(node)) receives.push_back(node);  // a loop's has inputs
    }
    absl::flat_hash_set<Node*> starts;
    for (Node* recv : receives) {
      std::string send_device;
      bool client_terminated = false;
      if (!GetNodeAttr(recv->attrs(), "send_device", &send_device).ok() ||
          !GetNodeAttr(recv->attrs(), "client_terminated", &client_terminated).ok() ||
          client_terminated) {
        continue;
      }
      const int from = PartyTask(send_device);
      if (from < 0 || from == task) continue;  // the client's tensors, or a party's own
      const std::vector<Node*> common = CommonOtherInputs(recv);
      if (common.empty()) {
        ++receives_at_start;
        continue;
      }
      Node* deepest = common.front();
      for (Node* node : common) {
        if (DepthOf(depth, node) > DepthOf(depth, deepest)) deepest = node;
      }
      Node* start = BurstStart(deepest, depth, span);
      graph->AddControlEdge(start, recv, /*allow_duplicates=*/false);
      starts.insert(start);
      ++receives_delayed;
    }
    burst_starts += static_cast<int64_t>(starts.size());
  }
};

}  // namespace

REGISTER_OPTIMIZATION(OptimizationPassRegistry::POST_PARTITIONING, 50, ReceiveInBursts);

}  // namespace tf_puma

// The pass's counts in this process (tests): receives it gave a control input, party-to-party
// receives it left to start with the call, and the distinct control inputs (bursts) it used.
extern "C" __attribute__((visibility("default"))) void TfPumaReceiveCounts(int64_t* delayed,
                                                                           int64_t* at_start,
                                                                           int64_t* bursts) {
  *delayed = tf_puma::receives_delayed.load();
  *at_start = tf_puma::receives_at_start.load();
  *bursts = tf_puma::burst_starts.load();
}
