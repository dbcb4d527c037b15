package ui

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/tandemhq/tandem"
)

// Live updates: a page names its live parts (view.Parts), elements drawn by
// a template whose root has a known id. GET /ui/live?view=<page URL> opens
// one server-sent-event stream for the page: it builds the page again from
// the server's view each time the view's etcd revision moves (and at least
// every livePoll, for what is not in etcd: agents' last contact, HA state),
// and sends the parts whose HTML changed, and the order of each container's
// rows when it changed. Each event's id is the revision it reflects; the
// browser's EventSource sends it back on reconnecting (Last-Event-ID), and
// the server, which keeps no state between connections, then sends every
// part again: a reconnect re-renders, never loses an update. static/ui.js
// replaces only the elements named, keeping the state of checkboxes,
// selects and focus, so a user's selection and scroll survive.

// livePoll bounds how long a stream waits without a revision change before
// it builds the page again.
const livePoll = 2 * time.Second

// liveReauth is how often a stream checks its session's token again.
const liveReauth = 30 * time.Second

// liveKeepAlive is how often an idle stream sends a comment, so proxies and
// the browser see it alive.
const liveKeepAlive = 15 * time.Second

// liveEvent is the data of one "parts" event.
type liveEvent struct {
	Rev    int64               `json:"rev"`
	Server string              `json:"server"`
	Parts  []livePart          `json:"parts"`
	Order  map[string][]string `json:"order,omitempty"`
}

type livePart struct {
	ID     string `json:"id"`
	Parent string `json:"parent,omitempty"`
	HTML   string `json:"html"`
}

func (u *UI) live(w http.ResponseWriter, r *http.Request) {
	page, vr, err := u.liveTarget(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	s := sessionOf(r)
	sent := map[string]string{}  // part id -> HTML last sent
	order := map[string]string{} // container id -> order last sent
	lastKeep, lastAuth := time.Now(), time.Now()
	for {
		// A token deleted or expired while the page is open ends its
		// stream (the next page load asks for a login).
		if u.cfg.Enforce && time.Since(lastAuth) > liveReauth {
			if _, _, err := u.authenticate(r); err != nil {
				msg, _ := json.Marshal(map[string]string{"error": tandem.ErrorMessage(err)})
				fmt.Fprintf(w, "event: gone\ndata: %s\n\n", msg)
				_ = rc.Flush()
				return
			}
			lastAuth = time.Now()
		}
		rev := u.svc.Revision()
		ev := liveEvent{Rev: rev, Server: u.svc.ID(), Order: map[string][]string{}}
		v, err := page.Build(vr, s)
		if err != nil {
			// The page's object is gone (a job deleted): tell the page once.
			msg, _ := json.Marshal(map[string]string{"error": err.Error()})
			fmt.Fprintf(w, "id: %d\nevent: gone\ndata: %s\n\n", rev, msg)
			_ = rc.Flush()
			return
		}
		v.Page = page
		parts := append([]part{{ID: "banner-inner", Template: "banner-live", Data: u.banner()}}, v.Parts...)
		kids := map[string][]string{}
		var containers []string
		for _, p := range parts {
			html, err := u.renderPart(page.Template, p)
			if err != nil {
				u.log.Error("render live part", "part", p.ID, "err", err)
				return
			}
			if p.Parent != "" {
				if _, ok := kids[p.Parent]; !ok {
					containers = append(containers, p.Parent)
				}
				kids[p.Parent] = append(kids[p.Parent], p.ID)
			}
			if sent[p.ID] == html {
				continue
			}
			sent[p.ID] = html
			ev.Parts = append(ev.Parts, livePart{ID: p.ID, Parent: p.Parent, HTML: html})
		}
		for _, c := range containers {
			o := strings.Join(kids[c], "\x00")
			if order[c] != o {
				order[c] = o
				ev.Order[c] = kids[c]
			}
		}
		// A container whose rows all went away.
		for c := range order {
			if _, ok := kids[c]; !ok && order[c] != "" {
				order[c] = ""
				ev.Order[c] = []string{}
			}
		}
		if len(ev.Parts) > 0 || len(ev.Order) > 0 {
			b, err := json.Marshal(ev)
			if err != nil {
				return
			}
			if _, err := fmt.Fprintf(w, "id: %d\nevent: parts\ndata: %s\n\n", rev, b); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
			lastKeep = time.Now()
		} else if time.Since(lastKeep) > liveKeepAlive {
			if _, err := fmt.Fprintf(w, ": keep-alive %d\n\n", rev); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
			lastKeep = time.Now()
		}
		ctx, cancel := context.WithTimeout(r.Context(), livePoll)
		_ = u.svc.WaitRevision(ctx, rev+1)
		cancel()
		if r.Context().Err() != nil {
			return
		}
		// Several writes in a burst make one event, not one each.
		select {
		case <-r.Context().Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// liveTarget finds the page a stream is for, and a request for it as the
// page itself was requested (path, query, path values, the caller's
// session).
func (u *UI) liveTarget(r *http.Request) (*Page, *http.Request, error) {
	raw := r.URL.Query().Get("view")
	target, err := url.Parse(raw)
	if err != nil || !strings.HasPrefix(target.Path, "/ui/") || target.Host != "" || target.Scheme != "" {
		return nil, nil, fmt.Errorf("view must be a page of this UI, not %q", raw)
	}
	vr := r.Clone(r.Context())
	vr.URL = target
	vr.RequestURI = target.RequestURI()
	vr.Method = http.MethodGet
	_, pattern := u.mux.Handler(vr)
	i := slices.IndexFunc(u.pages, func(p *Page) bool { return p.Pattern == pattern })
	if i < 0 {
		return nil, nil, fmt.Errorf("no live page at %q", target.Path)
	}
	p := u.pages[i]
	// Path values the page's Build reads ({id}).
	if strings.Contains(p.Pattern, "{id}") {
		rest := strings.TrimPrefix(target.Path, strings.TrimSuffix(strings.Fields(p.Pattern)[1], "{id}"))
		id, err := url.PathUnescape(rest)
		if err != nil || id == "" || strings.Contains(id, "/") {
			return nil, nil, fmt.Errorf("bad page path %q", target.Path)
		}
		vr.SetPathValue("id", id)
	}
	return p, vr, nil
}

// renderPart draws one live part with the page's templates.
func (u *UI) renderPart(page string, p part) (string, error) {
	var b strings.Builder
	if err := u.tmpl[page].ExecuteTemplate(&b, p.Template, p.Data); err != nil {
		return "", err
	}
	return b.String(), nil
}
