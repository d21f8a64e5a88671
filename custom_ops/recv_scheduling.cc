// A graph pass: a party starts receiving a message when it reaches the message's consumer.
//
// TensorFlow's partitioner turns every cross-device edge into a _Send/_Recv pair. A _Recv has
// no inputs, so a party's executor starts every receive of a call at the call's start, and each
// one holds a RecvTensor RPC open on both parties until its tensor is sent: ~50 KiB the pair
// (benchmarks/pending_transfers.py), ~0.5 GiB per call for a party of a SmolLM2 prefill
// (~11,000 receives). This pass runs after TensorFlow partitions a function (in the process that
// instantiates it: the client) and gives each receive between two party tasks control inputs:
// the nodes every one of its consumers also waits for on that party (their other inputs that
// are neither receives nor there from the start, like constants). The receive then starts
// when the party has computed what it combines the message with, typically its own message of
// the same round, so the RPC is open for about a round instead of the whole call, and no node
// or message is added.
//
// Deadlock-free: a control input X is an input of every consumer C of the receive R, so X is
// not downstream of R (that path would run through some consumer C, making X -> C a cycle).
//
// Opt-in: TF_PUMA_RECEIVE_WHEN_REACHED=1 in the instantiating process. On this 2-core machine
// it took a 128-token SmolLM2 generation's party peak from 4,735 to 4,322 MiB but a next token
// from 8.8 to 11.0 s: a RecvTensor RPC started while the parties compute costs more than one
// of the call's initial burst (README, "Receives that start when the party reaches them").
//
// TensorFlow's own build defines NDEBUG, and tensorflow::EdgeSet has a member only without it:
// this file reads a Graph's edges, so it must see TensorFlow's layout whatever our flags are.
#ifndef NDEBUG
#define NDEBUG
#endif
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

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

class ReceiveWhenReached : public GraphOptimizationPass {
 public:
  absl::Status Run(const GraphOptimizationPassOptions& options) override {
    if (options.partition_graphs == nullptr) return absl::OkStatus();
    const char* on = std::getenv("TF_PUMA_RECEIVE_WHEN_REACHED");
    if (on == nullptr || std::string(on) != "1") return absl::OkStatus();
    for (auto& [device, graph] : *options.partition_graphs) {
      const int task = PartyTask(device);
      if (task < 0 || graph == nullptr) continue;
      ScheduleReceives(task, graph.get());
    }
    return absl::OkStatus();
  }

 private:
  static void ScheduleReceives(int task, Graph* graph) {
    std::vector<Node*> receives;
    for (Node* node : graph->op_nodes()) {
      if (!node->IsRecv()) continue;
      if (!HasOpInputs(node)) receives.push_back(node);  // a loop's receive has inputs
    }
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
      for (Node* node : common) graph->AddControlEdge(node, recv, /*allow_duplicates=*/false);
      ++receives_delayed;
    }
  }
};

}  // namespace

REGISTER_OPTIMIZATION(OptimizationPassRegistry::POST_PARTITIONING, 50, ReceiveWhenReached);

}  // namespace tf_puma

// The pass's counts in this process (tests): receives it gave control inputs, and party-to-party
// receives it left to start with the call.
extern "C" __attribute__((visibility("default"))) void TfPumaReceiveCounts(int64_t* delayed,
                                                                           int64_t* at_start) {
  *delayed = tf_puma::receives_delayed.load();
  *at_start = tf_puma::receives_at_start.load();
}
