package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"uniter/internal/compute"
	"uniter/internal/dist"
	"uniter/internal/train"
)

// worldFlags are the data-parallel flags of pretrain and finetune (README,
// Data parallel).
type worldFlags struct {
	replicas         int
	nnodes, nodeRank int
	masterAddr       string
	masterPort       int
	timeout          time.Duration
}

func registerWorldFlags(cmd *cobra.Command, w *worldFlags) {
	f := cmd.Flags()
	f.IntVar(&w.replicas, "replicas", 1, "data-parallel replicas in this process: one per GPU with --device cuda, CPU workers otherwise")
	f.IntVar(&w.nnodes, "nnodes", 0, "processes of the run, one per node (default: from torchrun, SLURM or Open MPI variables, else 1)")
	f.IntVar(&w.nodeRank, "node-rank", -1, "this process's rank among --nnodes (default: from the launcher's variables)")
	f.StringVar(&w.masterAddr, "master-addr", "", "host of rank 0, which serves the rendezvous (default: MASTER_ADDR or the first SLURM node)")
	f.IntVar(&w.masterPort, "master-port", 0, "port of the rendezvous on rank 0 (default: MASTER_PORT or 29500)")
	f.DurationVar(&w.timeout, "dist-timeout", 10*time.Minute, "longest wait for another rank: the rendezvous, and any collective (a rank that dies is noticed at once; this bounds a rank that hangs)")
}

// deadPoll is how often a process asks the rendezvous store whether a peer
// has died, so that a run stops within seconds of losing a rank even when
// this process is not blocked in a collective with it.
const deadPoll = 2 * time.Second

// joined is a process's membership in a multi-process run.
type joined struct {
	srv  *dist.Server
	kv   *dist.Client
	gloo *dist.Gloo
	rank int
	size int
	stop chan struct{}
}

// joinWorld builds the data-parallel world of this process: its replicas'
// backends and, when a launcher's variables or the flags say there are
// other processes, the rendezvous on rank 0's store and Gloo between the
// processes. close leaves the run (after a last barrier when it ended
// well).
func joinWorld(cmd *cobra.Command, wf worldFlags, device string, threads int) (train.World, *joined, error) {
	var w train.World
	if wf.replicas < 1 {
		return w, nil, fmt.Errorf("--replicas %d: want at least 1", wf.replicas)
	}
	launch, err := dist.FromEnv(os.Getenv)
	if err != nil {
		return w, nil, err
	}
	if err := launch.Override(wf.nnodes, wf.nodeRank, wf.masterAddr, wf.masterPort); err != nil {
		return w, nil, err
	}
	if err := launch.Validate(); err != nil {
		return w, nil, err
	}
	kind, ordinal, err := parseDevice(device)
	if err != nil {
		return w, nil, err
	}
	w = train.World{Replicas: wf.replicas, Rank: launch.Rank, Procs: launch.World}
	if wf.replicas == 1 && launch.World == 1 {
		// One replica: the caller's backend, as without data parallelism.
		return w, nil, nil
	}
	if kind == "cpu" {
		if threads <= 0 {
			threads = runtime.NumCPU()
		}
		per := max(threads/wf.replicas, 1)
		w.NewBackend = func(int) (compute.Backend, error) { return compute.NewCPU(per), nil }
	} else {
		// Replica i of local process r drives GPU ordinal + r*replicas + i.
		first := ordinal + launch.LocalRank*wf.replicas
		w.NewBackend = func(i int) (compute.Backend, error) {
			return openCUDA(fmt.Sprintf("cuda:%d", first+i), first+i)
		}
	}
	if launch.World == 1 {
		if kind == "cuda" && wf.replicas > 1 {
			if w.NewCollective, err = cudaCollective(nil, 0); err != nil {
				return w, nil, err
			}
		}
		return w, nil, nil
	}
	j, err := join(cmd.ErrOrStderr(), launch, wf.timeout)
	if err != nil {
		return w, nil, err
	}
	w.Host = hostComm{j}
	if kind == "cuda" {
		if w.NewCollective, err = cudaCollective(j.kv, launch.Rank); err != nil {
			j.close(false)
			return w, nil, err
		}
	}
	return w, j, nil
}

// join meets the other processes: rank 0 serves the store, every rank
// connects, waits for all the others, and connects Gloo.
func join(log io.Writer, l dist.Launch, timeout time.Duration) (*joined, error) {
	token := os.Getenv("UNITER_RDZV_TOKEN")
	j := &joined{rank: l.Rank, size: l.World, stop: make(chan struct{})}
	var err error
	if l.Rank == 0 {
		if j.srv, err = dist.Serve(fmt.Sprintf(":%d", l.MasterPort), dist.StoreOptions{World: l.World, Token: token, Log: log}); err != nil {
			return nil, fmt.Errorf("rank 0: serving the rendezvous on port %d: %w", l.MasterPort, err)
		}
	}
	if j.kv, err = dist.Dial(l.Master(), l.Rank, dist.DialOptions{Token: token, Timeout: timeout, World: l.World}); err != nil {
		j.close(false)
		return nil, fmt.Errorf("rank %d: %w", l.Rank, err)
	}
	if err := dist.Rendezvous(j.kv, l.Rank, l.World, timeout); err != nil {
		j.close(false)
		return nil, fmt.Errorf("rank %d: %w", l.Rank, err)
	}
	if j.gloo, err = dist.NewGloo(j.kv, "uniter/gloo", l.Rank, l.World, os.Getenv("UNITER_GLOO_HOST"), timeout); err != nil {
		j.close(false)
		return nil, fmt.Errorf("rank %d: %w", l.Rank, err)
	}
	fmt.Fprintf(log, "uniter: rank %d of %d joined the run at %s\n", l.Rank, l.World, l.Master())
	go j.watch(log)
	return j, nil
}

// watch ends the process when a peer has died or rank 0's store is gone:
// a collective with a dead peer fails by itself, but a process waiting
// for a live one that waits for the dead one would otherwise sit out the
// whole timeout.
func (j *joined) watch(log io.Writer) {
	t := time.NewTicker(deadPoll)
	defer t.Stop()
	for {
		select {
		case <-j.stop:
			return
		case <-t.C:
		}
		if err := j.deadErr(); err != nil {
			select {
			case <-j.stop:
				return
			default:
			}
			fmt.Fprintf(log, "uniter: rank %d: %v; stopping (the last complete checkpoint is intact; continue with --resume)\n", j.rank, err)
			os.Exit(1)
		}
	}
}

// deadErr says which peers left the run without closing, or that the
// store is gone; nil when all are there.
func (j *joined) deadErr() error {
	dead, err := j.kv.Dead()
	if err != nil {
		return err
	}
	if len(dead) > 0 {
		names := make([]string, len(dead))
		for i, r := range dead {
			names[i] = strconv.Itoa(r)
		}
		return fmt.Errorf("rank %s left the run without closing (killed or crashed)", strings.Join(names, ", "))
	}
	return nil
}

// close leaves the run; after a run that ended well every rank first
// waits for the others, so that rank 0's store outlives their last call.
func (j *joined) close(ok bool) {
	if j == nil {
		return
	}
	select {
	case <-j.stop:
	default:
		close(j.stop)
	}
	if ok && j.kv != nil {
		_ = dist.Barrier(j.kv, "uniter/end", j.rank, j.size, time.Minute)
	}
	if j.gloo != nil {
		_ = j.gloo.Close()
	}
	if j.kv != nil {
		_ = j.kv.Close()
	}
	if j.srv != nil {
		_ = j.srv.Close()
	}
}

// hostComm is Gloo with errors that name the rank that left, which
// Gloo's own (a closed socket) cannot.
type hostComm struct{ j *joined }

func (h hostComm) explain(err error) error {
	if err == nil {
		return nil
	}
	// A peer's socket can close a moment before the store hears its
	// connection drop: give the store that moment to name the rank.
	for range explainPolls {
		if dead := h.j.deadErr(); dead != nil {
			return fmt.Errorf("rank %d: %w (%v)", h.j.rank, dead, err)
		}
		time.Sleep(explainPoll)
	}
	return fmt.Errorf("rank %d: %w", h.j.rank, err)
}

// How long a failed collective waits for the store to name a dead peer.
const (
	explainPolls = 20
	explainPoll  = 100 * time.Millisecond
)

func (h hostComm) AllReduceF32(b []float32) error { return h.explain(h.j.gloo.AllReduceF32(b)) }
func (h hostComm) AllReduceF64(b []float64) error { return h.explain(h.j.gloo.AllReduceF64(b)) }
func (h hostComm) AllGather(b []byte) ([][]byte, error) {
	out, err := h.j.gloo.AllGather(b)
	return out, h.explain(err)
}

// cudaCollective returns the NCCL communicator factory of the CUDA
// replicas (the cuda build sets ncclFactory); kv shares rank 0's NCCL id
// between processes (nil in one process).
func cudaCollective(kv dist.KV, procRank int) (train.CollectiveFunc, error) {
	if ncclFactory == nil {
		return nil, errors.New("data parallel on CUDA needs NCCL, which this binary was built without")
	}
	return ncclFactory(kv, procRank)
}

// ncclFactory is set by the cuda build.
var ncclFactory func(kv dist.KV, procRank int) (train.CollectiveFunc, error)
