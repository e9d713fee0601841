#!/usr/bin/python3
"""Gloo all-reduce time on this machine, for docs/distributed.md: N processes on loopback sum a float buffer of
each size (the same gloo library LibTorch links, driven through torch.distributed).

usage: /usr/bin/python3 bench/allreduce.py [PROCESSES] [MB ...]     (default: 2 processes, 0.5 2.3 25 100 MB)
"""
import json
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank, world, sizes, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    for mb in sizes:
        x = torch.ones(int(mb * 1e6 / 4))
        for _ in range(2):
            dist.all_reduce(x)
        rounds = max(3, int(20 / max(mb, 1)))
        dist.barrier()
        start = time.perf_counter()
        for _ in range(rounds):
            dist.all_reduce(x)
        results[mb] = (time.perf_counter() - start) / rounds
    if rank == 0:
        out.put(results)
    dist.destroy_process_group()


if __name__ == "__main__":
    world = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    sizes = [float(s) for s in sys.argv[2:]] or [0.5, 2.3, 25.0, 100.0]
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(worker, args=(world, sizes, 29000 + os.getpid() % 1000, queue), nprocs=world)
    results = queue.get()
    print(json.dumps({"processes": world, "threads_per_process": 1,
                      "sizes_mb": {str(mb): {"seconds": s, "algorithm_gb_per_s": mb / 1e3 / s}
                                   for mb, s in results.items()}}, indent=1))
