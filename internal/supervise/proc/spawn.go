package proc

import (
	"os"
	"runtime"
	"sync"
)

// The kernel sends a child its Pdeathsig when the *thread* that forked it
// exits, not when the process does. The Go runtime ends an OS thread whenever
// a goroutine exits while locked to it, so a fork from an arbitrary goroutine
// could have its command killed at a random later moment. Every fork of this
// package therefore happens on one goroutine that locks its OS thread and
// never returns: that thread lives exactly as long as the supervisor process,
// which is what Pdeathsig is meant to track.
var spawner struct {
	once sync.Once
	reqs chan spawnReq
}

type spawnReq struct {
	name  string
	argv  []string
	attr  *os.ProcAttr
	reply chan spawnRes
}

type spawnRes struct {
	p   *os.Process
	err error
}

// startProcess is os.StartProcess, run on the spawner thread.
func startProcess(name string, argv []string, attr *os.ProcAttr) (*os.Process, error) {
	spawner.once.Do(func() {
		spawner.reqs = make(chan spawnReq)
		go spawnLoop(spawner.reqs)
	})
	reply := make(chan spawnRes, 1)
	spawner.reqs <- spawnReq{name: name, argv: argv, attr: attr, reply: reply}
	res := <-reply
	return res.p, res.err
}

// spawnLoop is the spawner goroutine. It is owned by the package and by
// design never ends: its thread must outlive every child it forked.
func spawnLoop(reqs <-chan spawnReq) {
	runtime.LockOSThread() // never unlocked, see spawner
	for r := range reqs {
		p, err := os.StartProcess(r.name, r.argv, r.attr)
		r.reply <- spawnRes{p: p, err: err}
	}
}
