// Where a process sits in a data-parallel job, read from the launchers' environments (torchrun, SLURM). The
// processes themselves (rendezvous, all-reduce, faults) are tested on loopback by the CLI suite (class Distributed).
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <string>

#include "core/error.h"
#include "distributed/dist.h"

namespace adafocus {
namespace {

// Sets the variables for the test's lifetime, clearing every other launcher variable.
class Environment {
 public:
  explicit Environment(const std::map<std::string, std::string>& values) {
    for (const char* name : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                             "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT", "SLURM_PROCID",
                             "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE",
                             "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID"}) {
      if (const char* v = std::getenv(name)) saved_[name] = v;
      unsetenv(name);
    }
    for (const auto& [name, value] : values) setenv(name.c_str(), value.c_str(), 1);
    set_ = values;
  }
  ~Environment() {
    for (const auto& [name, value] : set_) unsetenv(name.c_str());
    for (const auto& [name, value] : saved_) setenv(name.c_str(), value.c_str(), 1);
  }

 private:
  std::map<std::string, std::string> saved_, set_;
};

TEST(Launch, NoLauncherIsOneProcess) {
  Environment env({});
  const dist::Launch l = dist::Launch::from_env();
  EXPECT_EQ(l.world, 1);
  EXPECT_EQ(l.rank, 0);
  EXPECT_EQ(l.launcher, "");
  EXPECT_EQ(dist::local_processes(), 1);
}

TEST(Launch, TorchrunVariables) {
  Environment env({{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "4"},
                   {"MASTER_ADDR", "10.0.0.2"}, {"MASTER_PORT", "29400"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                   {"TORCHELASTIC_RESTART_COUNT", "2"}});
  const dist::Launch l = dist::Launch::from_env();
  EXPECT_EQ(l.launcher, "torchrun");
  EXPECT_EQ(l.rank, 5);
  EXPECT_EQ(l.world, 8);
  EXPECT_EQ(l.local_rank, 1);
  EXPECT_EQ(l.local_world, 4);
  EXPECT_EQ(l.master_addr, "10.0.0.2");
  EXPECT_EQ(l.master_port, 29400);
  EXPECT_TRUE(l.agent_store);
  EXPECT_EQ(l.restart, 2);
  EXPECT_EQ(dist::local_processes(), 4);
}

TEST(Launch, SlurmVariablesWithTheMasterFromTheNodeList) {
  Environment env({{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "6"}, {"SLURM_LOCALID", "1"},
                   {"SLURM_TASKS_PER_NODE", "2(x3)"}, {"SLURM_JOB_NODELIST", "gpu[07-09,12],cpu5"},
                   {"SLURM_JOB_ID", "123456"}});
  const dist::Launch l = dist::Launch::from_env();
  EXPECT_EQ(l.launcher, "slurm");
  EXPECT_EQ(l.rank, 3);
  EXPECT_EQ(l.world, 6);
  EXPECT_EQ(l.local_rank, 1);
  EXPECT_EQ(l.local_world, 2);
  EXPECT_EQ(l.master_addr, "gpu07");
  EXPECT_EQ(l.master_port, 29500 + 456);  // from the job id: two jobs on one node do not collide
}

TEST(Launch, TorchrunVariablesWinOverSlurms) {
  // torchrun started by srun: its variables describe the processes.
  Environment env({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}});
  const dist::Launch l = dist::Launch::from_env();
  EXPECT_EQ(l.launcher, "torchrun");
  EXPECT_EQ(l.rank, 1);
  EXPECT_EQ(l.world, 2);
}

TEST(Launch, BadVariablesAreNamed) {
  {
    Environment env({{"RANK", "one"}, {"WORLD_SIZE", "2"}});
    try {
      dist::Launch::from_env();
      FAIL() << "a rank that is not a number was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.where(), "RANK");
      EXPECT_NE(std::string(e.what()).find("RANK=one"), std::string::npos) << e.what();
    }
  }
  {
    Environment env({{"RANK", "2"}, {"WORLD_SIZE", "2"}});
    EXPECT_THROW(dist::Launch::from_env(), Error);
  }
  {
    Environment env({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"MASTER_PORT", "70000"}});
    EXPECT_THROW(dist::Launch::from_env(), Error);
  }
}

}  // namespace
}  // namespace adafocus
