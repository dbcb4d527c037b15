package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/tandemhq/tandem/internal/election"
	"github.com/tandemhq/tandem/internal/keys"
	"github.com/tandemhq/tandem/internal/supervise"
)

// What the bench sees from outside the supervisors: the client's requests
// to the VIP, which processes run in each node's command cgroup, the
// supervisors' keys in etcd, where the VIP is, and when a command dies.

// answer is one client request to the VIP: a new TCP connection and a GET.
type answer struct {
	start, end time.Time
	ok         bool
	node       string // who answered (from the body), when ok
	epoch      int64
	pid        int
}

// parseAnswer reads the body of tandem bench supervise-service: "NODE EPOCH PID".
func parseAnswer(body string) (node string, epoch int64, pid int, err error) {
	f := strings.Fields(body)
	if len(f) != 3 {
		return "", 0, 0, fmt.Errorf("answer %q: want NODE EPOCH PID", body)
	}
	if epoch, err = strconv.ParseInt(f[1], 10, 64); err != nil {
		return "", 0, 0, fmt.Errorf("answer %q: epoch: %w", body, err)
	}
	if pid, err = strconv.Atoi(f[2]); err != nil {
		return "", 0, 0, fmt.Errorf("answer %q: pid: %w", body, err)
	}
	return f[0], epoch, pid, nil
}

// prober is the client: from the root namespace, every interval, a new
// connection to the VIP and one request on it, each with a timeout, many
// in flight at once while the VIP does not answer.
type prober struct {
	url     string
	every   time.Duration
	timeout time.Duration
	hc      *http.Client

	mu      sync.Mutex
	answers []answer
	changed chan struct{}
}

func newProber(addr netip.AddrPort, every time.Duration) *prober {
	timeout := time.Second
	tr := &http.Transport{
		DisableKeepAlives: true, // a new connection every time
		DialContext:       (&net.Dialer{Timeout: timeout}).DialContext,
		Proxy:             nil,
	}
	return &prober{url: "http://" + addr.String() + "/", every: every, timeout: timeout,
		hc: &http.Client{Transport: tr, Timeout: timeout}, changed: make(chan struct{})}
}

// run probes until ctx ends, and waits for the probes in flight.
func (p *prober) run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(p.every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		wg.Add(1)
		go func() { defer wg.Done(); p.probe(ctx) }()
	}
}

func (p *prober) probe(ctx context.Context) {
	a := answer{start: time.Now()}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.url, nil)
	resp, err := p.hc.Do(req)
	if err == nil {
		body, rerr := io.ReadAll(io.LimitReader(resp.Body, 256))
		resp.Body.Close()
		if rerr == nil && resp.StatusCode == http.StatusOK {
			a.node, a.epoch, a.pid, err = parseAnswer(string(body))
			a.ok = err == nil
		}
	}
	a.end = time.Now()
	if ctx.Err() != nil {
		return // cut short by the end of the run: says nothing
	}
	p.mu.Lock()
	p.answers = append(p.answers, a)
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

// since returns the answers that ended at or after t, in order of end.
func (p *prober) since(t time.Time) []answer {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []answer
	for _, a := range p.answers {
		if !a.end.Before(t) {
			out = append(out, a)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].end.Before(out[j].end) })
	return out
}

// forget drops the answers that ended before t (a trial never looks back
// further than its own start).
func (p *prober) forget(t time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	kept := p.answers[:0]
	for _, a := range p.answers {
		if !a.end.Before(t) {
			kept = append(kept, a)
		}
	}
	p.answers = kept
}

// waitAnswer waits until an answer that ended after t satisfies ok.
func (p *prober) waitAnswer(ctx context.Context, t time.Time, ok func(answer) bool) error {
	for {
		p.mu.Lock()
		ch := p.changed
		for _, a := range p.answers {
			if !a.end.Before(t) && ok(a) {
				p.mu.Unlock()
				return nil
			}
		}
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// outage is what the client saw of one trial.
type outage struct {
	// LastOld is the end of the last successful request the old run
	// answered, FirstNew the end of the first one the new run answered.
	LastOld, FirstNew time.Time
	// Stale counts requests the old run answered that started after the new
	// run's first answer: two runs serving at once, as a client saw it.
	Stale int
}

// clientOutage finds, among answers (in order of end), the last answer of
// the old run and the first of the new one. ok is false if the new run
// never answered.
func clientOutage(answers []answer, isOld, isNew func(answer) bool) (o outage, ok bool) {
	for _, a := range answers {
		if !a.ok {
			continue
		}
		if isNew(a) && (o.FirstNew.IsZero() || a.end.Before(o.FirstNew)) {
			o.FirstNew = a.end
		}
	}
	if o.FirstNew.IsZero() {
		return o, false
	}
	for _, a := range answers {
		if !a.ok || !isOld(a) {
			continue
		}
		if a.end.After(o.LastOld) && !a.end.After(o.FirstNew) {
			o.LastOld = a.end
		}
		if a.start.After(o.FirstNew) {
			o.Stale++
		}
	}
	return o, true
}

// runners polls each node's command cgroup every few ms and keeps, for
// every process seen, the first and last time it was seen and on which
// node. A process is alive over that whole interval (the same pid seen at
// both ends: pids are not reused within milliseconds), so two intervals of
// different nodes that overlap prove two commands ran at once; an overlap
// shorter than the poll interval can be missed.
type runners struct {
	every time.Duration
	paths map[string]string // node -> cgroup.procs

	mu   sync.Mutex
	seen map[runKey]*span
}

type runKey struct {
	node string
	pid  int
}

// span is when a process was seen.
type span struct {
	Node        string
	PID         int
	First, Last time.Time
}

func newRunners(every time.Duration, paths map[string]string) *runners {
	return &runners{every: every, paths: paths, seen: map[runKey]*span{}}
}

func (r *runners) run(ctx context.Context) {
	tick := time.NewTicker(r.every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for node, path := range r.paths {
			pids := readPIDs(path)
			now := time.Now()
			r.mu.Lock()
			for _, pid := range pids {
				k := runKey{node, pid}
				if s := r.seen[k]; s != nil {
					s.Last = now
				} else {
					r.seen[k] = &span{Node: node, PID: pid, First: now, Last: now}
				}
			}
			r.mu.Unlock()
		}
	}
}

// spans returns every process seen, by first sighting.
func (r *runners) spans() []span {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]span, 0, len(r.seen))
	for _, s := range r.seen {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].First.Before(out[j].First) })
	return out
}

// overlap is two commands seen running at once on two nodes.
type overlap struct {
	A, B span
	// For is how long both were seen at once.
	For time.Duration
}

// overlaps returns every pair of spans of different nodes that overlap.
func overlaps(spans []span) []overlap {
	var out []overlap
	for i := range spans {
		for j := i + 1; j < len(spans); j++ {
			a, b := spans[i], spans[j]
			if a.Node == b.Node {
				continue
			}
			from, to := later(a.First, b.First), earlier(a.Last, b.Last)
			if !from.After(to) {
				out = append(out, overlap{A: a, B: b, For: to.Sub(from)})
			}
		}
	}
	return out
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// svcState is what the bench's etcd watch knows of the service.
type svcState struct {
	owner     *election.Owner // nil: none
	status    *supervise.RunStatus
	nodes     map[string]bool // live supervisors
	deletions []ownerDeletion
}

// ownerDeletion is an owner key's deletion as the watch received it.
type ownerDeletion struct {
	epoch int64
	at    time.Time
}

// etcdWatch keeps svcState from a watch of the cluster's supervise keys.
type etcdWatch struct {
	cli  *clientv3.Client
	keys keys.Layout

	mu      sync.Mutex
	st      svcState
	changed chan struct{}
}

func newEtcdWatch(cli *clientv3.Client, cluster string) *etcdWatch {
	return &etcdWatch{cli: cli, keys: keys.New(cluster), st: svcState{nodes: map[string]bool{}}, changed: make(chan struct{})}
}

// run keeps the state until ctx ends, reading everything again after a
// broken watch.
func (w *etcdWatch) run(ctx context.Context) {
	prefix := w.keys.SupervisePrefix()
	for ctx.Err() == nil {
		resp, err := w.cli.Get(ctx, prefix, clientv3.WithPrefix())
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		w.mu.Lock()
		w.st.owner, w.st.status, w.st.nodes = nil, nil, map[string]bool{}
		for _, kv := range resp.Kvs {
			w.apply(kv, false, time.Now())
		}
		w.notify()
		w.mu.Unlock()
		wch := w.cli.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(),
			clientv3.WithRev(resp.Header.Revision+1), clientv3.WithPrevKV())
		for wr := range wch {
			now := time.Now()
			if wr.Err() != nil {
				break
			}
			w.mu.Lock()
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypeDelete {
					kv := ev.Kv
					if ev.PrevKv != nil {
						kv = ev.PrevKv
					}
					w.apply(kv, true, now)
				} else {
					w.apply(ev.Kv, false, now)
				}
			}
			w.notify()
			w.mu.Unlock()
		}
	}
}

func (w *etcdWatch) notify() {
	close(w.changed)
	w.changed = make(chan struct{})
}

// apply records one key's new value (or deletion), with w.mu held.
func (w *etcdWatch) apply(kv *mvccpb.KeyValue, deleted bool, at time.Time) {
	key := string(kv.Key)
	switch {
	case key == w.keys.SuperviseOwnership(superviseService).Owner:
		if deleted {
			w.st.owner = nil
			w.st.deletions = append(w.st.deletions, ownerDeletion{epoch: kv.CreateRevision, at: at})
			return
		}
		var o election.Owner
		if json.Unmarshal(kv.Value, &o) == nil {
			o.Epoch, o.Lease, o.Key = kv.CreateRevision, kv.Lease, key
			w.st.owner = &o
		}
	case key == w.keys.SuperviseStatus(superviseService):
		if deleted {
			w.st.status = nil
			return
		}
		var s supervise.RunStatus
		if json.Unmarshal(kv.Value, &s) == nil {
			w.st.status = &s
		}
	case strings.HasPrefix(key, w.keys.SuperviseNodesPrefix()):
		node := strings.TrimPrefix(key, w.keys.SuperviseNodesPrefix())
		if deleted {
			delete(w.st.nodes, node)
		} else {
			w.st.nodes[node] = true
		}
	}
}

// state returns a copy of the state.
func (w *etcdWatch) state() svcState {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.st
	st.nodes = make(map[string]bool, len(w.st.nodes))
	for n := range w.st.nodes {
		st.nodes[n] = true
	}
	st.deletions = append([]ownerDeletion(nil), w.st.deletions...)
	return st
}

// wait waits until cond holds of the state, or ctx ends. Conditions that
// also look outside etcd are checked again every 20 ms.
func (w *etcdWatch) wait(ctx context.Context, cond func(svcState) bool) error {
	for {
		w.mu.Lock()
		ch := w.changed
		w.mu.Unlock()
		if cond(w.state()) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// deletedAt returns when the watch saw the owner key of epoch deleted.
func (st svcState) deletedAt(epoch int64) (time.Time, bool) {
	for _, d := range st.deletions {
		if d.epoch == epoch {
			return d.at, true
		}
	}
	return time.Time{}, false
}

// vipWatch follows the VIP on every node: a netlink subscription to
// address changes in each node's namespace timestamps when it is added or
// removed, and a netlink handle in each lists who holds it now.
type vipWatch struct {
	vip     netip.Addr
	handles map[string]*netlink.Handle

	mu     sync.Mutex
	events []vipEvent
}

// vipEvent is the VIP added to or removed from a node, as the bench saw it.
type vipEvent struct {
	node  string
	added bool
	at    time.Time
}

// newVIPWatch subscribes to address changes in every node's namespace
// (namespaces by node name) until ctx ends.
func newVIPWatch(ctx context.Context, vip netip.Addr, namespaces map[string]string) (*vipWatch, error) {
	w := &vipWatch{vip: vip, handles: map[string]*netlink.Handle{}}
	for node, ns := range namespaces {
		h, err := vnetns.GetFromName(ns)
		if err != nil {
			w.close()
			return nil, fmt.Errorf("namespace of %s: %w", node, err)
		}
		nh, err := netlink.NewHandleAt(h)
		if err != nil {
			h.Close()
			w.close()
			return nil, fmt.Errorf("netlink in %s: %w", node, err)
		}
		w.handles[node] = nh
		ch := make(chan netlink.AddrUpdate, 64)
		err = netlink.AddrSubscribeWithOptions(ch, ctx.Done(), netlink.AddrSubscribeOptions{Namespace: &h})
		h.Close()
		if err != nil {
			w.close()
			return nil, fmt.Errorf("watch the addresses of %s: %w", node, err)
		}
		go func() {
			for u := range ch {
				ip, ok := netip.AddrFromSlice(u.LinkAddress.IP)
				if !ok || ip.Unmap() != vip {
					continue
				}
				w.mu.Lock()
				w.events = append(w.events, vipEvent{node: node, added: u.NewAddr, at: time.Now()})
				w.mu.Unlock()
			}
		}()
	}
	return w, nil
}

// holders lists the nodes whose namespace holds the VIP now.
func (w *vipWatch) holders() ([]string, error) {
	var out []string
	for node, h := range w.handles {
		addrs, err := h.AddrList(nil, netlink.FAMILY_V4)
		if err != nil {
			return nil, fmt.Errorf("addresses of %s: %w", node, err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == w.vip {
				out = append(out, node)
				break
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// lastChange returns the last time at or after t the VIP was added to
// (added true) or removed from node.
func (w *vipWatch) lastChange(node string, added bool, t time.Time) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var at time.Time
	for _, e := range w.events {
		if e.node == node && e.added == added && !e.at.Before(t) {
			at = e.at
		}
	}
	return at, !at.IsZero()
}

// firstChange returns the first time at or after t the VIP was added to
// (added true) or removed from node.
func (w *vipWatch) firstChange(node string, added bool, t time.Time) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, e := range w.events {
		if e.node == node && e.added == added && !e.at.Before(t) {
			return e.at, true
		}
	}
	return time.Time{}, false
}

func (w *vipWatch) close() {
	for _, h := range w.handles {
		h.Close()
	}
}

// deathWatch tells when a process (not a child of the bench) dies: through
// a pidfd, which becomes readable the moment the process exits, or, where
// pidfd_open is missing (Linux before 5.3), by looking for /proc/PID every
// millisecond.
type deathWatch struct {
	died chan struct{}
	at   time.Time // set before died is closed
	stop chan struct{}
	once sync.Once
}

func watchDeath(pid int) *deathWatch {
	d := &deathWatch{died: make(chan struct{}), stop: make(chan struct{})}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			d.at = time.Now()
			close(d.died)
			return d
		}
		go d.pollProc(pid)
		return d
	}
	go func() {
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			select {
			case <-d.stop:
				return
			default:
			}
			n, err := unix.Poll(fds, 100)
			if err != nil && !errors.Is(err, unix.EINTR) {
				d.pollProc(pid) // cannot poll: fall back
				return
			}
			if n > 0 {
				d.at = time.Now()
				close(d.died)
				return
			}
		}
	}()
	return d
}

func (d *deathWatch) pollProc(pid int) {
	path := "/proc/" + strconv.Itoa(pid) + "/stat"
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		if st, err := os.ReadFile(path); err != nil || isZombie(st) {
			d.at = time.Now()
			close(d.died)
			return
		}
		select {
		case <-d.stop:
			return
		case <-tick.C:
		}
	}
}

// isZombie reports whether a /proc/PID/stat says the process has exited
// and waits to be reaped.
func isZombie(stat []byte) bool {
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 || i+2 >= len(stat) {
		return false
	}
	return stat[i+2] == 'Z' || stat[i+2] == 'X'
}

// when returns the time of death, if the process died.
func (d *deathWatch) when() (time.Time, bool) {
	select {
	case <-d.died:
		return d.at, true
	default:
		return time.Time{}, false
	}
}

func (d *deathWatch) close() { d.once.Do(func() { close(d.stop) }) }

// logLine is one record of a supervisor's JSON log.
type logLine struct {
	Time time.Time `json:"time"`
	Msg  string    `json:"msg"`
	PID  int       `json:"pid"`
}

// Messages of the supervisor's log the bench reads for restarts in place,
// which leave no failover record.
const (
	msgRestarting = "the service failed; restarting it in place"
	msgStarted    = "started the command"
)

// scanLog reads a supervisor's JSON log and returns the first record with
// each message.
func scanLog(r io.Reader) map[string]logLine {
	out := map[string]logLine{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		if _, ok := out[l.Msg]; !ok {
			out[l.Msg] = l
		}
	}
	return out
}

// logFrom scans the log file at path from offset.
func logFrom(path string, offset int64) (map[string]logLine, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, err
	}
	return scanLog(f), nil
}

// logSize is the size of the file at path (0 if it cannot be read).
func logSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}
