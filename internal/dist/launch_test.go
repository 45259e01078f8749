package dist

import (
	"strings"
	"testing"
)

func envOf(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func TestFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want Launch
		err  string
	}{
		{name: "single process", env: nil, want: Launch{World: 1, LocalWorld: 1, NNodes: 1}},
		{name: "salloc shell is not a task", env: map[string]string{"SLURM_JOB_ID": "7", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "n[1-2]"},
			want: Launch{World: 1, LocalWorld: 1, NNodes: 1}},

		{name: "torchrun", env: map[string]string{"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
			"GROUP_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400"},
			want: Launch{Rank: 5, World: 8, LocalRank: 1, LocalWorld: 4, NodeRank: 1, NNodes: 2, MasterAddr: "10.0.0.1", MasterPort: 29400, Source: "torchrun"}},
		{name: "torchrun without GROUP_RANK or port", env: map[string]string{"RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "h0"},
			want: Launch{Rank: 6, World: 8, LocalRank: 2, LocalWorld: 4, NodeRank: 1, NNodes: 2, MasterAddr: "h0", MasterPort: 29500, Source: "torchrun"}},
		{name: "env:// by hand, one node", env: map[string]string{"RANK": "1", "WORLD_SIZE": "2"},
			want: Launch{Rank: 1, World: 2, LocalRank: 1, LocalWorld: 2, NNodes: 1, MasterAddr: "127.0.0.1", MasterPort: 29500, Source: "torchrun"}},
		{name: "torchrun rank too big", env: map[string]string{"RANK": "5", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"},
			err: "RANK=5 is not below WORLD_SIZE=4"},
		{name: "torchrun rank not a number", env: map[string]string{"RANK": "one", "WORLD_SIZE": "4"}, err: `RANK="one" is not an integer`},
		{name: "torchrun no world", env: map[string]string{"RANK": "0"}, err: "WORLD_SIZE is not set"},
		{name: "torchrun negative rank", env: map[string]string{"RANK": "-1", "WORLD_SIZE": "4"}, err: "RANK=-1 is negative"},
		{name: "torchrun zero world", env: map[string]string{"RANK": "0", "WORLD_SIZE": "0"}, err: "WORLD_SIZE=0 is not positive"},
		{name: "torchrun uneven", env: map[string]string{"RANK": "0", "WORLD_SIZE": "6", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "h"},
			err: "WORLD_SIZE=6 is not a multiple of LOCAL_WORLD_SIZE=4"},
		{name: "torchrun local rank", env: map[string]string{"RANK": "0", "WORLD_SIZE": "8", "LOCAL_RANK": "4", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "h"},
			err: "LOCAL_RANK=4 is not below LOCAL_WORLD_SIZE=4"},
		{name: "torchrun two nodes no master", env: map[string]string{"RANK": "0", "WORLD_SIZE": "8", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4"},
			err: "MASTER_ADDR is not set, but WORLD_SIZE=8 processes must meet at rank 0"},
		{name: "torchrun bad port", env: map[string]string{"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "70000"}, err: "MASTER_PORT=70000 is not a TCP port"},
		{name: "torchrun port text", env: map[string]string{"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "http"}, err: `MASTER_PORT="http" is not an integer`},
		{name: "torchrun group rank", env: map[string]string{"RANK": "0", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "2", "MASTER_ADDR": "h"},
			err: "GROUP_RANK=2 is not below node count (WORLD_SIZE/LOCAL_WORLD_SIZE)=2"},
		{name: "torchrun wins over inherited SLURM", env: map[string]string{"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4",
			"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0"},
			want: Launch{Rank: 3, World: 4, LocalRank: 3, LocalWorld: 4, NNodes: 1, MasterAddr: "127.0.0.1", MasterPort: 29500, Source: "torchrun"}},

		{name: "slurm", env: map[string]string{"SLURM_PROCID": "6", "SLURM_NTASKS": "8", "SLURM_LOCALID": "2", "SLURM_NODEID": "1",
			"SLURM_NNODES": "2", "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_STEP_NODELIST": "gpu[01-04,07],cpu1", "SLURM_JOB_NODELIST": "x1"},
			want: Launch{Rank: 6, World: 8, LocalRank: 2, LocalWorld: 4, NodeRank: 1, NNodes: 2, MasterAddr: "gpu01", MasterPort: 29500, Source: "slurm"}},
		{name: "slurm uneven nodes", env: map[string]string{"SLURM_PROCID": "8", "SLURM_NTASKS": "9", "SLURM_LOCALID": "0", "SLURM_NODEID": "2",
			"SLURM_NNODES": "3", "SLURM_TASKS_PER_NODE": "4(x2),1", "SLURM_JOB_NODELIST": "node-[3,5,9]"},
			want: Launch{Rank: 8, World: 9, LocalRank: 0, LocalWorld: 1, NodeRank: 2, NNodes: 3, MasterAddr: "node-3", MasterPort: 29500, Source: "slurm"}},
		{name: "slurm ntasks-per-node and MASTER override", env: map[string]string{"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_NODEID": "0",
			"SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_STEP_NODELIST": "a1", "MASTER_ADDR": "head", "MASTER_PORT": "1234"},
			want: Launch{Rank: 1, World: 4, LocalRank: 1, LocalWorld: 2, NodeRank: 0, NNodes: 2, MasterAddr: "head", MasterPort: 1234, Source: "slurm"}},
		{name: "slurm even split, one node", env: map[string]string{"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1"},
			want: Launch{Rank: 1, World: 2, LocalRank: 1, LocalWorld: 2, NNodes: 1, MasterAddr: "127.0.0.1", MasterPort: 29500, Source: "slurm"}},
		{name: "slurm procid text", env: map[string]string{"SLURM_PROCID": "x", "SLURM_NTASKS": "4"}, err: `SLURM_PROCID="x" is not an integer`},
		{name: "slurm no localid", env: map[string]string{"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, err: "SLURM_LOCALID is not set"},
		{name: "slurm no nodeid", env: map[string]string{"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_NNODES": "2"},
			err: "SLURM_NODEID is not set, but the step spans 2 nodes"},
		{name: "slurm procid big", env: map[string]string{"SLURM_PROCID": "4", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
			"SLURM_NNODES": "1", "SLURM_STEP_NODELIST": "a1"}, err: "SLURM_PROCID=4 is not below SLURM_NTASKS=4"},
		{name: "slurm nodeid big", env: map[string]string{"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_NODEID": "2",
			"SLURM_NNODES": "2"}, err: "SLURM_NODEID=2 is not below SLURM_NNODES=2"},
		{name: "slurm tasks per node", env: map[string]string{"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
			"SLURM_NNODES": "2", "SLURM_STEP_TASKS_PER_NODE": "2(y2)"}, err: `SLURM_STEP_TASKS_PER_NODE="2(y2)" has a malformed item "2(y2)"`},
		{name: "slurm tasks per node short", env: map[string]string{"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_NODEID": "2",
			"SLURM_NNODES": "3", "SLURM_STEP_TASKS_PER_NODE": "2(x2)"}, err: `SLURM_STEP_TASKS_PER_NODE="2(x2)" lists 2 nodes, too few for node 2`},
		{name: "slurm bad nodelist", env: map[string]string{"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
			"SLURM_NNODES": "2", "SLURM_STEP_NODELIST": "gpu[01-02"}, err: `SLURM_STEP_NODELIST="gpu[01-02" is not a Slurm host list: "[" without "]"`},
		{name: "slurm two nodes no list", env: map[string]string{"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
			"SLURM_NNODES": "2"}, err: "MASTER_ADDR is not set, but SLURM_NTASKS=4 processes must meet at rank 0"},
		{name: "slurm uneven without tasks per node", env: map[string]string{"SLURM_PROCID": "0", "SLURM_NTASKS": "5", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
			"SLURM_NNODES": "2"}, err: "SLURM_STEP_TASKS_PER_NODE is not set, and SLURM_NTASKS=5 does not split evenly over 2 nodes"},

		{name: "openmpi", env: map[string]string{"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
			"OMPI_COMM_WORLD_LOCAL_SIZE": "4", "MASTER_ADDR": "m", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"},
			want: Launch{Rank: 5, World: 8, LocalRank: 1, LocalWorld: 4, NodeRank: 1, NNodes: 2, MasterAddr: "m", MasterPort: 29500, Source: "openmpi"}},
		{name: "openmpi one node", env: map[string]string{"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
			"OMPI_COMM_WORLD_LOCAL_SIZE": "2"},
			want: Launch{Rank: 1, World: 2, LocalRank: 1, LocalWorld: 2, NNodes: 1, MasterAddr: "127.0.0.1", MasterPort: 29500, Source: "openmpi"}},
		{name: "openmpi no master", env: map[string]string{"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
			"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, err: "MASTER_ADDR is not set: Open MPI does not say where rank 0 runs"},
		{name: "openmpi no local size", env: map[string]string{"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1"},
			err: "OMPI_COMM_WORLD_LOCAL_SIZE is not set"},
		{name: "openmpi rank big", env: map[string]string{"OMPI_COMM_WORLD_RANK": "8", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
			"OMPI_COMM_WORLD_LOCAL_SIZE": "4", "MASTER_ADDR": "m"}, err: "OMPI_COMM_WORLD_RANK=8 is not below OMPI_COMM_WORLD_SIZE=8"},
		{name: "openmpi size text", env: map[string]string{"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "8.0"}, err: `OMPI_COMM_WORLD_SIZE="8.0" is not an integer`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FromEnv(envOf(tc.env))
			if tc.err != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestFirstHost(t *testing.T) {
	for _, tc := range []struct{ list, want, err string }{
		{list: "gpu[01-04,07],cpu1", want: "gpu01"},
		{list: "node-[3,5]", want: "node-3"},
		{list: "a1", want: "a1"},
		{list: "a1,b2", want: "a1"},
		{list: "rack[1-2]-n[01-02]", want: "rack1-n01"},
		{list: "[5-6]x", want: "5x"},
		{list: "n[007]", want: "n007"},
		{list: "gpu[01", err: `"[" without "]"`},
		{list: "gpu]01", err: `"]" without "["`},
		{list: "gpu[[1]]", err: `nested "["`},
		{list: "gpu[]", err: `empty "[]"`},
		{list: "gpu[a-b]", err: `bad range "a-b"`},
		{list: "gpu[1-]", err: `bad range "1-"`},
		{list: ",a", err: "no host"},
	} {
		got, err := firstHost(tc.list)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("%q: %q, %v, want error %q", tc.list, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %q, %v, want %q", tc.list, got, err, tc.want)
		}
	}
}

func TestTasksOnNode(t *testing.T) {
	for _, tc := range []struct {
		spec string
		node int
		want int
		err  string
	}{
		{"4(x2)", 1, 4, ""},
		{"4(x2),1", 2, 1, ""},
		{"4(x2),1", 0, 4, ""},
		{"3", 5, 3, ""},
		{"1(x4000000000)", 3, 1, ""},
		{"2,3", 2, 0, "lists 2 nodes, too few for node 2"},
		{"0", 0, 0, `has a malformed item "0"`},
		{"4(x", 0, 0, `has a malformed item "4(x"`},
		{"", 0, 0, `has a malformed item ""`},
	} {
		got, err := tasksOnNode(tc.spec, tc.node)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("%q node %d: %d, %v, want error %q", tc.spec, tc.node, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q node %d: %d, %v, want %d", tc.spec, tc.node, got, err, tc.want)
		}
	}
}

func TestOverride(t *testing.T) {
	single := Launch{World: 1, LocalWorld: 1, NNodes: 1}
	torch := Launch{Rank: 5, World: 8, LocalRank: 1, LocalWorld: 4, NodeRank: 1, NNodes: 2, MasterAddr: "h0", MasterPort: 29500, Source: "torchrun"}
	for _, tc := range []struct {
		name             string
		base             Launch
		nnodes, nodeRank int
		addr             string
		port             int
		want             Launch
		err              string
	}{
		{name: "nothing", base: single, nodeRank: -1, want: single},
		{name: "flags node 1", base: single, nnodes: 2, nodeRank: 1, addr: "head", port: 0,
			want: Launch{Rank: 1, World: 2, LocalWorld: 1, NodeRank: 1, NNodes: 2, MasterAddr: "head", MasterPort: 29500, Source: "flags"}},
		{name: "flags node 0 defaults to localhost", base: single, nnodes: 3, nodeRank: 0, port: 4000,
			want: Launch{World: 3, LocalWorld: 1, NNodes: 3, MasterAddr: "127.0.0.1", MasterPort: 4000, Source: "flags"}},
		{name: "flags node 1 needs a master", base: single, nnodes: 2, nodeRank: 1,
			err: "--master-addr is not set, but world size=2 processes must meet at rank 0"},
		{name: "flags node rank too big", base: single, nnodes: 2, nodeRank: 2, err: "--node-rank=2 is not below --nnodes=2"},
		{name: "flags negative nnodes", base: single, nnodes: -2, nodeRank: -1, err: "--nnodes=-2 is negative"},
		{name: "flags bad port", base: single, nodeRank: -1, port: 65536, err: "--master-port=65536 is not a TCP port"},
		{name: "launcher master override", base: torch, nnodes: 2, nodeRank: 1, addr: "other", port: 1111,
			want: Launch{Rank: 5, World: 8, LocalRank: 1, LocalWorld: 4, NodeRank: 1, NNodes: 2, MasterAddr: "other", MasterPort: 1111, Source: "torchrun"}},
		{name: "launcher nnodes conflict", base: torch, nnodes: 3, nodeRank: -1, err: "--nnodes=3 disagrees with torchrun, which started 2 nodes"},
		{name: "launcher node rank conflict", base: torch, nodeRank: 0, err: "--node-rank=0 disagrees with torchrun, which put this process on node 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.base
			err := l.Override(tc.nnodes, tc.nodeRank, tc.addr, tc.port)
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				if l != tc.base {
					t.Fatalf("a failed Override changed l to %+v", l)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if l != tc.want {
				t.Fatalf("got  %+v\nwant %+v", l, tc.want)
			}
		})
	}
}

func TestValidateAndMaster(t *testing.T) {
	if err := (Launch{World: 4, LocalWorld: 8, NNodes: 1, MasterAddr: "h", MasterPort: 1, Source: "torchrun"}).Validate(); err == nil ||
		err.Error() != "LOCAL_WORLD_SIZE=8 is larger than WORLD_SIZE=4" {
		t.Fatalf("err = %v", err)
	}
	if err := (Launch{World: 1, LocalWorld: 1, NNodes: 1, Source: "pbs"}).Validate(); err == nil {
		t.Fatal("unknown source accepted")
	}
	if got := (Launch{MasterAddr: "fe80::1", MasterPort: 29500}).Master(); got != "[fe80::1]:29500" {
		t.Fatalf("Master = %s", got)
	}
}
