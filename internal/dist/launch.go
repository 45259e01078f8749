package dist

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Launch is where this process sits in a run: what the launcher (or the
// flags) said, checked once so the trainer can trust it.
type Launch struct {
	Rank, World           int // global rank and world size of processes
	LocalRank, LocalWorld int // within the node
	NodeRank, NNodes      int
	MasterAddr            string
	MasterPort            int
	// Source is "torchrun", "slurm", "openmpi", "flags", or "" for a single
	// process; error messages name that launcher's variables.
	Source string
}

// localhost is the master when every process is on this node: no launcher
// needs to say where rank 0 is then.
const localhost = "127.0.0.1"

type env func(string) string

func (e env) has(name string) bool { return strings.TrimSpace(e(name)) != "" }

// int reads an optional integer variable.
func (e env) int(name string) (n int, ok bool, err error) {
	v := strings.TrimSpace(e(name))
	if v == "" {
		return 0, false, nil
	}
	n, err = strconv.Atoi(v)
	if err != nil {
		return 0, false, fmt.Errorf("%s=%q is not an integer", name, e(name))
	}
	return n, true, nil
}

func (e env) need(name string) (int, error) {
	n, ok, err := e.int(name)
	if err == nil && !ok {
		err = fmt.Errorf("%s is not set", name)
	}
	return n, err
}

// FromEnv reads the ranks a launcher gave this process, trying torchrun,
// then Open MPI, then SLURM: a launcher started inside a Slurm allocation
// inherits SLURM_* variables that describe the allocation, not this
// process, so the more specific launcher wins. With none of them it is a
// single process. The result is validated.
func FromEnv(getenv func(string) string) (Launch, error) {
	e := env(getenv)
	var l Launch
	var err error
	switch {
	case e.has("RANK") || e.has("WORLD_SIZE"):
		l, err = fromTorchrun(e)
	case e.has("OMPI_COMM_WORLD_RANK") || e.has("OMPI_COMM_WORLD_SIZE"):
		l, err = fromOpenMPI(e)
	case e.has("SLURM_PROCID") && e.has("SLURM_NTASKS"):
		// SLURM_JOB_ID alone is a salloc shell, not a task of a step.
		l, err = fromSlurm(e)
	default:
		l = Launch{World: 1, LocalWorld: 1, NNodes: 1}
		// Kept so that --nnodes alone can use them.
		l.MasterAddr = strings.TrimSpace(e("MASTER_ADDR"))
		l.MasterPort, _, err = e.int("MASTER_PORT")
	}
	if err != nil {
		return Launch{}, err
	}
	if err := l.Validate(); err != nil {
		return Launch{}, err
	}
	return l, nil
}

// master fills MasterAddr and MasterPort from MASTER_ADDR and MASTER_PORT,
// falling back to fallback and DefaultStorePort.
func (l *Launch) master(e env, fallback string) error {
	l.MasterAddr = strings.TrimSpace(e("MASTER_ADDR"))
	if l.MasterAddr == "" {
		l.MasterAddr = fallback
	}
	port, ok, err := e.int("MASTER_PORT")
	if err != nil {
		return err
	}
	if !ok {
		port = DefaultStorePort
	}
	l.MasterPort = port
	return nil
}

func fromTorchrun(e env) (Launch, error) {
	l := Launch{Source: "torchrun"}
	var err error
	if l.Rank, err = e.need("RANK"); err != nil {
		return l, err
	}
	if l.World, err = e.need("WORLD_SIZE"); err != nil {
		return l, err
	}
	if l.World < 1 {
		return l, fmt.Errorf("WORLD_SIZE=%d is not positive", l.World)
	}
	// Hand-made env:// launches often set only RANK and WORLD_SIZE; they
	// are one node then.
	lw, ok, err := e.int("LOCAL_WORLD_SIZE")
	if err != nil {
		return l, err
	}
	if !ok {
		lw = l.World
	}
	if lw < 1 {
		return l, fmt.Errorf("LOCAL_WORLD_SIZE=%d is not positive", lw)
	}
	l.LocalWorld = lw
	lr, ok, err := e.int("LOCAL_RANK")
	if err != nil {
		return l, err
	}
	if !ok {
		// torchrun numbers ranks node by node.
		lr = l.Rank % lw
	}
	l.LocalRank = lr
	if l.World%lw != 0 {
		return l, fmt.Errorf("WORLD_SIZE=%d is not a multiple of LOCAL_WORLD_SIZE=%d", l.World, lw)
	}
	l.NNodes = l.World / lw
	nr, ok, err := e.int("GROUP_RANK")
	if err != nil {
		return l, err
	}
	if !ok {
		nr = l.Rank / lw
	}
	l.NodeRank = nr
	fallback := ""
	if l.NNodes == 1 {
		fallback = localhost
	}
	return l, l.master(e, fallback)
}

func fromOpenMPI(e env) (Launch, error) {
	l := Launch{Source: "openmpi"}
	var err error
	for _, f := range []struct {
		p    *int
		name string
	}{
		{&l.Rank, "OMPI_COMM_WORLD_RANK"},
		{&l.World, "OMPI_COMM_WORLD_SIZE"},
		{&l.LocalRank, "OMPI_COMM_WORLD_LOCAL_RANK"},
		{&l.LocalWorld, "OMPI_COMM_WORLD_LOCAL_SIZE"},
	} {
		if *f.p, err = e.need(f.name); err != nil {
			return l, err
		}
	}
	if l.World < 1 || l.LocalWorld < 1 {
		return l, l.Validate()
	}
	// Open MPI gives no node index; this holds for its default by-slot
	// mapping and only feeds logs.
	l.NNodes = (l.World + l.LocalWorld - 1) / l.LocalWorld
	l.NodeRank = min(l.Rank/l.LocalWorld, l.NNodes-1)
	fallback := ""
	if l.LocalWorld == l.World {
		fallback = localhost
	}
	if err := l.master(e, fallback); err != nil {
		return l, err
	}
	if l.MasterAddr == "" {
		return l, fmt.Errorf("MASTER_ADDR is not set: Open MPI does not say where rank 0 runs, so export it to all %d processes (mpirun -x MASTER_ADDR=host)", l.World)
	}
	return l, nil
}

func fromSlurm(e env) (Launch, error) {
	l := Launch{Source: "slurm"}
	var err error
	if l.Rank, err = e.need("SLURM_PROCID"); err != nil {
		return l, err
	}
	if l.World, err = e.need("SLURM_NTASKS"); err != nil {
		return l, err
	}
	if l.LocalRank, err = e.need("SLURM_LOCALID"); err != nil {
		return l, err
	}
	l.NNodes = 1
	for _, name := range []string{"SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES"} {
		n, ok, err := e.int(name)
		if err != nil {
			return l, err
		}
		if ok {
			if n < 1 {
				return l, fmt.Errorf("%s=%d is not positive", name, n)
			}
			l.NNodes = n
			break
		}
	}
	nr, ok, err := e.int("SLURM_NODEID")
	if err != nil {
		return l, err
	}
	if !ok && l.NNodes > 1 {
		return l, fmt.Errorf("SLURM_NODEID is not set, but the step spans %d nodes", l.NNodes)
	}
	l.NodeRank = nr
	if l.NodeRank < 0 {
		return l, fmt.Errorf("SLURM_NODEID=%d is negative", l.NodeRank)
	}
	if l.NodeRank >= l.NNodes {
		return l, fmt.Errorf("SLURM_NODEID=%d is not below SLURM_NNODES=%d", l.NodeRank, l.NNodes)
	}

	l.LocalWorld = 0
	for _, name := range []string{"SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE"} {
		spec := strings.TrimSpace(e(name))
		if spec == "" {
			continue
		}
		n, err := tasksOnNode(spec, l.NodeRank)
		if err != nil {
			return l, fmt.Errorf("%s=%q %v", name, spec, err)
		}
		l.LocalWorld = n
		break
	}
	if l.LocalWorld == 0 {
		if l.World%l.NNodes != 0 {
			return l, fmt.Errorf("SLURM_STEP_TASKS_PER_NODE is not set, and SLURM_NTASKS=%d does not split evenly over %d nodes", l.World, l.NNodes)
		}
		l.LocalWorld = l.World / l.NNodes
	}

	fallback := ""
	for _, name := range []string{"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"} {
		list := strings.TrimSpace(e(name))
		if list == "" {
			continue
		}
		h, err := firstHost(list)
		if err != nil {
			if e.has("MASTER_ADDR") {
				break // overridden anyway
			}
			return l, fmt.Errorf("%s=%q is not a Slurm host list: %v", name, list, err)
		}
		fallback = h
		break
	}
	if fallback == "" && l.NNodes == 1 {
		fallback = localhost
	}
	return l, l.master(e, fallback)
}

// tasksOnNode reads Slurm's tasks-per-node list ("4(x2),2": four tasks on
// each of two nodes, then two) for node without expanding it, since the
// repeat counts come from the environment.
func tasksOnNode(spec string, node int) (int, error) {
	left := node
	items := strings.Split(spec, ",")
	for i, item := range items {
		count, rep := item, "1"
		if j := strings.IndexByte(item, '('); j >= 0 {
			if !strings.HasPrefix(item[j:], "(x") || !strings.HasSuffix(item, ")") {
				return 0, fmt.Errorf("has a malformed item %q", item)
			}
			count, rep = item[:j], item[j+2:len(item)-1]
		}
		c, err1 := strconv.Atoi(count)
		r, err2 := strconv.Atoi(rep)
		if err1 != nil || err2 != nil || c < 1 || r < 1 {
			return 0, fmt.Errorf("has a malformed item %q", item)
		}
		if left < r {
			return c, nil
		}
		left -= r
		if i == len(items)-1 && len(items) == 1 && r == 1 {
			// A bare "4" is the same on every node (SLURM_NTASKS_PER_NODE).
			return c, nil
		}
	}
	return 0, fmt.Errorf("lists %d nodes, too few for node %d", node-left, node)
}

// firstHost returns the first host of a Slurm compressed host list
// ("gpu[01-04,07],cpu1" → "gpu01"); rank 0 runs there.
func firstHost(list string) (string, error) {
	depth, end := 0, len(list)
scan:
	for i, ch := range list {
		switch ch {
		case '[':
			if depth++; depth > 1 {
				return "", errors.New(`nested "["`)
			}
		case ']':
			if depth--; depth < 0 {
				return "", errors.New(`"]" without "["`)
			}
		case ',':
			if depth == 0 {
				end = i
				break scan
			}
		}
	}
	if depth != 0 {
		return "", errors.New(`"[" without "]"`)
	}
	item := list[:end]
	var b strings.Builder
	for item != "" {
		i := strings.IndexByte(item, '[')
		if i < 0 {
			b.WriteString(item)
			break
		}
		b.WriteString(item[:i])
		j := strings.IndexByte(item, ']')
		first, err := firstInRange(item[i+1 : j])
		if err != nil {
			return "", err
		}
		b.WriteString(first)
		item = item[j+1:]
	}
	host := b.String()
	if host == "" {
		return "", errors.New("no host")
	}
	return host, nil
}

// firstInRange checks a bracket's "01-04,07" and returns "01", keeping the
// zero padding that is part of the host name.
func firstInRange(r string) (string, error) {
	if r == "" {
		return "", errors.New(`empty "[]"`)
	}
	var first string
	for k, part := range strings.Split(r, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		if !digits(lo) || (isRange && !digits(hi)) {
			return "", fmt.Errorf("bad range %q", part)
		}
		if k == 0 {
			first = lo
		}
	}
	return first, nil
}

func digits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// Override applies --nnodes, --node-rank, --master-addr and --master-port.
// Unset flags are passed as nnodes 0, nodeRank -1, masterAddr "" and
// masterPort 0. Without a launcher the flags define the run: one process
// per node, rank = node rank × local world + local rank. Under a launcher
// the launcher knows the ranks, so nnodes and nodeRank may only repeat what
// it said, while the master address and port replace its. The result is
// validated; on error l is unchanged.
func (l *Launch) Override(nnodes, nodeRank int, masterAddr string, masterPort int) error {
	if nnodes < 0 {
		return fmt.Errorf("--nnodes=%d is negative", nnodes)
	}
	if nodeRank < -1 {
		return fmt.Errorf("--node-rank=%d is negative", nodeRank)
	}
	if masterPort < 0 || masterPort > 65535 {
		return fmt.Errorf("--master-port=%d is not a TCP port", masterPort)
	}
	next := *l
	if masterAddr != "" {
		next.MasterAddr = masterAddr
	}
	if masterPort != 0 {
		next.MasterPort = masterPort
	}
	if l.Source == "" || l.Source == "flags" {
		if nnodes > 0 || nodeRank >= 0 {
			n, nr := next.NNodes, next.NodeRank
			if nnodes > 0 {
				n = nnodes
			}
			if nodeRank >= 0 {
				nr = nodeRank
			}
			if nr >= n {
				return fmt.Errorf("--node-rank=%d is not below --nnodes=%d", nr, n)
			}
			next.NNodes, next.NodeRank = n, nr
			next.World = n * next.LocalWorld
			next.Rank = nr*next.LocalWorld + next.LocalRank
			next.Source = "flags"
		}
		if next.World > 1 {
			if next.MasterPort == 0 {
				next.MasterPort = DefaultStorePort
			}
			if next.MasterAddr == "" && next.NodeRank == 0 {
				next.MasterAddr = localhost // the store runs on this node
			}
		}
	} else {
		if nnodes > 0 && nnodes != l.NNodes {
			return fmt.Errorf("--nnodes=%d disagrees with %s, which started %d nodes", nnodes, l.Source, l.NNodes)
		}
		if nodeRank >= 0 && nodeRank != l.NodeRank {
			return fmt.Errorf("--node-rank=%d disagrees with %s, which put this process on node %d", nodeRank, l.Source, l.NodeRank)
		}
	}
	if err := next.Validate(); err != nil {
		return err
	}
	*l = next
	return nil
}

// fieldNames are the names a source gives each field, so an error points
// at the variable the user can fix.
type fieldNames struct {
	rank, world, localRank, localWorld, nodeRank, nnodes, addr, port string
}

var sourceNames = map[string]fieldNames{
	"torchrun": {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "node count (WORLD_SIZE/LOCAL_WORLD_SIZE)", "MASTER_ADDR", "MASTER_PORT"},
	"slurm":    {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "tasks on this node", "SLURM_NODEID", "SLURM_NNODES", "MASTER_ADDR", "MASTER_PORT"},
	"openmpi":  {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "node rank", "node count", "MASTER_ADDR", "MASTER_PORT"},
	"flags":    {"rank", "world size", "local rank", "local world size", "--node-rank", "--nnodes", "--master-addr", "--master-port"},
	"":         {"rank", "world size", "local rank", "local world size", "node rank", "node count", "MASTER_ADDR", "MASTER_PORT"},
}

// Validate checks that the fields describe a possible run; each error is
// one sentence naming the variable and its value.
func (l Launch) Validate() error {
	nm, ok := sourceNames[l.Source]
	if !ok {
		return fmt.Errorf("launch source %q is not one of torchrun, slurm, openmpi, flags", l.Source)
	}
	below := func(name string, v int, bound string, b int) error {
		if v < 0 {
			return fmt.Errorf("%s=%d is negative", name, v)
		}
		if v >= b {
			return fmt.Errorf("%s=%d is not below %s=%d", name, v, bound, b)
		}
		return nil
	}
	switch {
	case l.World < 1:
		return fmt.Errorf("%s=%d is not positive", nm.world, l.World)
	case l.LocalWorld < 1:
		return fmt.Errorf("%s=%d is not positive", nm.localWorld, l.LocalWorld)
	case l.NNodes < 1:
		return fmt.Errorf("%s=%d is not positive", nm.nnodes, l.NNodes)
	case l.LocalWorld > l.World:
		return fmt.Errorf("%s=%d is larger than %s=%d", nm.localWorld, l.LocalWorld, nm.world, l.World)
	case l.NNodes > l.World:
		return fmt.Errorf("%s=%d is larger than %s=%d", nm.nnodes, l.NNodes, nm.world, l.World)
	}
	if err := below(nm.rank, l.Rank, nm.world, l.World); err != nil {
		return err
	}
	if err := below(nm.localRank, l.LocalRank, nm.localWorld, l.LocalWorld); err != nil {
		return err
	}
	if err := below(nm.nodeRank, l.NodeRank, nm.nnodes, l.NNodes); err != nil {
		return err
	}
	if l.MasterPort < 0 || l.MasterPort > 65535 || (l.World > 1 && l.MasterPort == 0) {
		return fmt.Errorf("%s=%d is not a TCP port", nm.port, l.MasterPort)
	}
	if l.World > 1 && l.MasterAddr == "" {
		return fmt.Errorf("%s is not set, but %s=%d processes must meet at rank 0", nm.addr, nm.world, l.World)
	}
	return nil
}

// Master is the store's address for Dial.
func (l Launch) Master() string {
	return net.JoinHostPort(l.MasterAddr, strconv.Itoa(l.MasterPort))
}
