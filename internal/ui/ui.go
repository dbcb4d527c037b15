// Package ui is tandem's web UI (DESIGN.md section 11): server-rendered
// pages under /ui/ on every server, drawn from that server's own hot view, so
// a standby shows the cluster as well as the active does and never bounces
// the browser elsewhere.
//
// Everything the browser gets is in this package, embedded in the binary:
// html/template pages, one stylesheet and one small script of our own
// (static/ui.js) that keeps a page live over one server-sent-event stream
// (live.go) and follows attempt logs by byte offset (logs.go). No
// JavaScript build step, no third-party script in the page: docs/UI.md says
// why.
//
// Security (docs/UI.md, "Security"): with tokens enforced, a login page
// puts the token in an HttpOnly, SameSite=Strict cookie that any server of
// the cluster accepts (every server checks tokens against etcd); pages
// show only the buttons the token's policy allows, and every write is a
// request to the server's own API (Config.API), so the API's guard checks
// and audits it like any other. POSTs must be same-origin and carry the
// session's CSRF token; every answer carries a strict
// Content-Security-Policy.
package ui

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tandemhq/tandem"
	"github.com/tandemhq/tandem/internal/acl"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Service is what the UI reads of its server: the server's own view, never
// redirected. *server.Server implements it (as part of api.Service).
type Service interface {
	ID() string
	Shards() int
	State() tandem.HAState
	Status() tandem.ServerStatus
	History() []tandem.FailoverEvent
	Servers() []tandem.ServerInfo
	ShardInfos() []tandem.ShardInfo
	Job(id string) (*tandem.Job, int64, error)
	Jobs(after string, limit int, state tandem.JobState) ([]*tandem.Job, string)
	Agents() []tandem.AgentStatus
	Agent(id string) (tandem.AgentInfo, bool)
	Revision() int64
	WaitRevision(ctx context.Context, rev int64) error
}

// Config configures the UI of one server.
type Config struct {
	// Service is the server whose view the pages show.
	Service Service
	// API is the server's own API handler. Every write the UI makes is a
	// request to it (with the caller's token), so the API's guard checks,
	// and audits, the UI's writes exactly as it does the CLI's.
	API http.Handler
	// Tokens checks the token of the session cookie; Enforce requires one
	// (tandem server --acl). Without Enforce nobody logs in and every
	// button shows: the API allows everything too.
	Tokens  acl.Authenticator
	Enforce bool
	// AgentClient fetches attempt logs from agents (with TLS: this
	// server's certificate, agents' expected).
	AgentClient *http.Client
	// ServerClient forwards a write to another server of the cluster (the
	// active, a shard's owner, the server to drain): with TLS, this
	// server's certificate, and only servers of the cluster's CA accepted.
	ServerClient *http.Client
	// Log gets the UI's log records.
	Log *slog.Logger
	// Now is the clock the pages show times against (time.Now when nil).
	Now func() time.Time
}

// UI serves /ui/ of one server. Create it with New.
type UI struct {
	cfg   Config
	svc   Service
	log   *slog.Logger
	pages []*Page
	tmpl  map[string]*template.Template
	mux   *http.ServeMux
	// static is the embedded static folder, its files' version stamp for
	// cache busting.
	static  fs.FS
	version string
	// etcdCache keeps what etcd said of its members for the cluster page.
	etcdCache etcdCache
}

// Page is one page of the UI: a path under /ui/, its title, and how to
// build it. The nav bar lists every page with a Nav label, in order. A
// feature adds its pages in pageList (as schedules and workflows do, when
// the Service has them), with a template of the same name in templates/,
// and gets the layout, the banner, the login and live updates with them.
type Page struct {
	// Pattern is the ServeMux pattern ("GET /ui/jobs/{id}").
	Pattern string
	// Nav is the label in the nav bar; empty keeps it out (detail pages).
	// NavPath is where the nav link goes.
	Nav, NavPath string
	// Template is the page's template file, without ".html".
	Template string
	// Build reads the server's view for request r and returns the page's
	// title, data and live parts (the elements live updates replace).
	Build func(r *http.Request, s *session) (*view, error)
}

// New returns the UI of cfg.Service.
func New(cfg Config) (*UI, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.AgentClient == nil {
		cfg.AgentClient = http.DefaultClient
	}
	if cfg.ServerClient == nil {
		cfg.ServerClient = http.DefaultClient
	}
	static, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, err
	}
	u := &UI{cfg: cfg, svc: cfg.Service, log: cfg.Log, mux: http.NewServeMux(), static: static}
	u.version = staticVersion(static)
	u.pages = u.pageList()
	if err := u.parse(); err != nil {
		return nil, err
	}
	u.routes()
	return u, nil
}

// ServeHTTP implements http.Handler for every path under /ui/.
func (u *UI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// No inline script or style, nothing from another origin, no framing:
	// an injected tag in a job's name or log can do nothing.
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "+
		"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("X-Frame-Options", "DENY")
	u.mux.ServeHTTP(w, r)
}

// Mountable reports whether r is a browser's request for a page rather than
// an API client's: the API leads it from / to /ui/.
func Mountable(r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, _, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(mt, "text/html") {
			return true
		}
	}
	return false
}

func (u *UI) routes() {
	csrf := http.NewCrossOriginProtection()
	post := func(pattern string, h http.HandlerFunc) {
		u.mux.Handle(pattern, csrf.Handler(u.checkCSRF(h)))
	}
	u.mux.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", u.staticHandler()))
	u.mux.HandleFunc("GET /ui/login", u.loginPage)
	post("POST /ui/login", u.login)
	post("POST /ui/logout", u.logout)
	u.mux.HandleFunc("GET /ui/live", u.needSession(u.live))
	u.mux.HandleFunc("GET /ui/jobs/{id}/log", u.needSession(u.jobLog))
	u.mux.HandleFunc("GET /ui/kill", u.needSession(u.killConfirm))
	post("POST /ui/kill", u.needSession(u.kill))
	u.mux.HandleFunc("GET /ui/jobs/{id}/resubmit", u.needSession(u.resubmitConfirm))
	post("POST /ui/jobs/{id}/resubmit", u.needSession(u.resubmit))
	post("POST /ui/cluster/failover", u.needSession(u.failover))
	post("POST /ui/cluster/drain", u.needSession(u.drain))
	if _, ok := u.svc.(Schedules); ok {
		u.mux.HandleFunc("GET /ui/schedules/{id}/{action}", u.needSession(u.scheduleConfirm))
		post("POST /ui/schedules/{id}/{action}", u.needSession(u.scheduleWrite))
	}
	if _, ok := u.svc.(Workflows); ok {
		u.mux.HandleFunc("GET /ui/workflows/{id}/{action}", u.needSession(u.workflowConfirm))
		post("POST /ui/workflows/{id}/{action}", u.needSession(u.workflowWrite))
	}
	for _, p := range u.pages {
		u.mux.HandleFunc(p.Pattern, u.needSession(u.pageHandler(p)))
	}
	u.mux.HandleFunc("/ui/", func(w http.ResponseWriter, r *http.Request) {
		u.errorPage(w, r, nil, tandem.Errorf(tandem.ENOTFOUND, "no page %s", r.URL.Path))
	})
}

// pageHandler serves page p in full.
func (u *UI) pageHandler(p *Page) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := sessionOf(r)
		v, err := p.Build(r, s)
		if err != nil {
			u.errorPage(w, r, s, err)
			return
		}
		v.Page = p
		u.render(w, r, s, http.StatusOK, p.Template, v)
	}
}

// render writes template name with v, inside the layout.
func (u *UI) render(w http.ResponseWriter, r *http.Request, s *session, code int, name string, v *view) {
	v.Session = s
	v.Banner = u.banner()
	v.Nav = u.nav(r)
	v.Version = u.version
	if v.Flash == "" {
		v.Flash, v.FlashErr = takeFlash(w, r)
	}
	if v.Live != "" {
		v.LiveURL = "/ui/live?" + url.Values{"view": {v.Live}}.Encode()
	}
	t := u.tmpl[name]
	if t == nil {
		http.Error(w, "no template "+name, http.StatusInternalServerError)
		return
	}
	var b strings.Builder
	if err := t.ExecuteTemplate(&b, "layout", v); err != nil {
		u.log.Error("render page", "page", name, "err", err)
		http.Error(w, "internal error (see the server log)", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(b.String()))
}

// errorPage shows err as a page with the status of its code.
func (u *UI) errorPage(w http.ResponseWriter, r *http.Request, s *session, err error) {
	code := tandem.HTTPStatus(tandem.ErrorCode(err))
	msg := tandem.ErrorMessage(err)
	if tandem.ErrorCode(err) == tandem.EINTERNAL {
		u.log.Error("ui request failed", "path", r.URL.Path, "err", err)
		msg = "internal error (see the server log)"
	}
	if s == nil {
		s = &session{}
	}
	u.render(w, r, s, code, "error", &view{Title: http.StatusText(code), Data: msg})
}

// banner is the strip on every page: which server rendered it, its state,
// and who is active (or owns the shards).
type banner struct {
	ID, URL   string
	State     tandem.HAState
	Revision  int64
	Shards    int
	Owned     []int
	ActiveID  string
	ActiveURL string
	Epoch     int64
	Owners    []tandem.ShardInfo
	Draining  bool
}

func (u *UI) banner() banner {
	st := u.svc.Status()
	b := banner{ID: st.ID, URL: st.URL, State: st.State, Revision: u.svc.Revision(), Shards: st.Shards,
		Owned: st.Owned, ActiveID: st.ActiveID, ActiveURL: st.ActiveURL, Epoch: st.Epoch, Draining: st.Draining}
	if st.Shards > 1 {
		b.Owners = u.svc.ShardInfos()
	}
	return b
}

type navItem struct {
	Label, Path string
	Current     bool
}

func (u *UI) nav(r *http.Request) []navItem {
	var out []navItem
	for _, p := range u.pages {
		if p.Nav == "" {
			continue
		}
		cur := r.URL.Path == p.NavPath || p.NavPath != "/ui/" && strings.HasPrefix(r.URL.Path, p.NavPath)
		out = append(out, navItem{Label: p.Nav, Path: p.NavPath, Current: cur})
	}
	return out
}

// view is what a page's template gets.
type view struct {
	Title string
	// Live is the page's URL (path and query) whose live parts the page's
	// event stream sends; empty for a page without live updates.
	Live    string
	LiveURL string
	Data    any
	// Parts are the page's live parts: elements whose id the event stream
	// replaces when their HTML changes.
	Parts []part
	Page  *Page
	// Filled by render.
	Session  *session
	Banner   banner
	Nav      []navItem
	Version  string
	Flash    string
	FlashErr bool
}

// part is one live element of a page: the template that draws it (whose
// root element has id ID) and its data. Parent, when set, is the id of the
// container whose children the stream keeps in the order of the parts.
type part struct {
	ID, Parent, Template string
	Data                 any
}

// Cookies of the UI. Their names carry the cluster's, so the sessions of
// two clusters on one host stay apart.
func (u *UI) tokenCookie() string { return "tandem-token-" + u.svc.Status().Cluster }
func (u *UI) csrfCookie() string  { return "tandem-csrf-" + u.svc.Status().Cluster }

// flashCookie carries a one-time message to the next page.
const flashCookie = "tandem-flash"

func setFlash(w http.ResponseWriter, r *http.Request, msg string, isErr bool) {
	v := "ok:" + msg
	if isErr {
		v = "err:" + msg
	}
	http.SetCookie(w, &http.Cookie{Name: flashCookie, Value: url.QueryEscape(v), Path: "/ui/", HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode, MaxAge: 60})
}

func takeFlash(w http.ResponseWriter, r *http.Request) (string, bool) {
	c, err := r.Cookie(flashCookie)
	if err != nil {
		return "", false
	}
	http.SetCookie(w, &http.Cookie{Name: flashCookie, Path: "/ui/", MaxAge: -1, HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	v, err := url.QueryUnescape(c.Value)
	if err != nil {
		return "", false
	}
	kind, msg, _ := strings.Cut(v, ":")
	return msg, kind == "err"
}

// session is who is looking: the token of the session cookie (nil without
// tokens enforced) and its CSRF token.
type session struct {
	Token   *acl.Token
	Enforce bool
	CSRF    string
	secret  string
}

// Can reports whether the session's token allows capability c (always,
// without tokens enforced): the pages show a button only if it does. The
// API checks again when the button is used.
func (s *session) Can(c string) bool {
	if !s.Enforce {
		return true
	}
	return s.Token != nil && s.Token.Policy.Allows(acl.Capability(c))
}

type sessionKey struct{}

func sessionOf(r *http.Request) *session {
	if s, ok := r.Context().Value(sessionKey{}).(*session); ok {
		return s
	}
	return &session{}
}

// needSession finds the caller's session: with tokens enforced, a valid
// token in the cookie, else the login page (for a page) or 401 (for the
// stream and the log panel's requests). It also gives every browser a CSRF
// token.
func (u *UI) needSession(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := &session{Enforce: u.cfg.Enforce, CSRF: u.ensureCSRF(w, r)}
		if u.cfg.Enforce {
			tok, secret, err := u.authenticate(r)
			if err != nil {
				if r.Method == http.MethodGet && r.URL.Path != "/ui/live" && !strings.HasSuffix(r.URL.Path, "/log") {
					q := url.Values{"next": {r.URL.RequestURI()}}
					if !errors.Is(err, errNoCookie) {
						q.Set("why", tandem.ErrorMessage(err))
					}
					http.Redirect(w, r, "/ui/login?"+q.Encode(), http.StatusSeeOther)
					return
				}
				http.Error(w, tandem.ErrorMessage(err), http.StatusUnauthorized)
				return
			}
			s.Token, s.secret = &tok, secret
		}
		h(w, r.WithContext(context.WithValue(r.Context(), sessionKey{}, s)))
	}
}

var errNoCookie = errors.New("ui: no session cookie")

// authenticate checks the session cookie's token against the cluster's
// tokens, as the API does a bearer token.
func (u *UI) authenticate(r *http.Request) (acl.Token, string, error) {
	c, err := r.Cookie(u.tokenCookie())
	if err != nil || c.Value == "" {
		return acl.Token{}, "", errNoCookie
	}
	if u.cfg.Tokens == nil {
		return acl.Token{}, "", tandem.Errorf(tandem.EUNAVAILABLE, "server %s cannot check tokens", u.svc.ID())
	}
	tok, err := u.cfg.Tokens.Authenticate(r.Context(), c.Value)
	switch {
	case errors.Is(err, acl.ErrNoToken):
		return tok, "", tandem.Errorf(tandem.EUNAUTHENTICATED, "the session's token is unknown or was deleted: log in again")
	case errors.Is(err, acl.ErrExpired):
		return tok, "", tandem.Errorf(tandem.EUNAUTHENTICATED, "the session's token has expired: log in with another")
	case err != nil:
		return tok, "", tandem.Errorf(tandem.EUNAVAILABLE, "cannot check the session's token now: %v", err)
	}
	return tok, c.Value, nil
}

// ensureCSRF returns the browser's CSRF token, giving it one if it has none.
// Every form carries it; checkCSRF compares.
func (u *UI) ensureCSRF(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(u.csrfCookie()); err == nil && len(c.Value) == 32 {
		return c.Value
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	v := hex.EncodeToString(b)
	http.SetCookie(w, &http.Cookie{Name: u.csrfCookie(), Value: v, Path: "/", HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	// Later reads in this request see it.
	r.AddCookie(&http.Cookie{Name: u.csrfCookie(), Value: v})
	return v
}

// checkCSRF refuses a POST whose form's csrf field is not the browser's
// CSRF cookie (double submit), on top of the same-origin check
// (http.CrossOriginProtection) in front of it.
func (u *UI) checkCSRF(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
		c, err := r.Cookie(u.csrfCookie())
		if err != nil || c.Value == "" || subtle.ConstantTimeCompare([]byte(c.Value), []byte(r.PostFormValue("csrf"))) != 1 {
			http.Error(w, "refused: the form's CSRF token does not match this browser's session (reload the page and try again)", http.StatusForbidden)
			return
		}
		h(w, r)
	}
}

// staticHandler serves the embedded static files, cached for a long time:
// their URLs carry the version stamp.
func (u *UI) staticHandler() http.Handler {
	fsrv := http.FileServerFS(u.static)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("v") == u.version {
			w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
		} else {
			w.Header().Set("Cache-Control", "no-cache")
		}
		fsrv.ServeHTTP(w, r)
	})
}

func (u *UI) loginPage(w http.ResponseWriter, r *http.Request) {
	s := &session{Enforce: u.cfg.Enforce, CSRF: u.ensureCSRF(w, r)}
	next := safeNext(r.URL.Query().Get("next"))
	if !u.cfg.Enforce {
		http.Redirect(w, r, next, http.StatusSeeOther)
		return
	}
	u.render(w, r, s, http.StatusOK, "login", &view{Title: "Log in", Data: loginData{Next: next, Why: r.URL.Query().Get("why")}})
}

type loginData struct{ Next, Why string }

// login checks the token given and, if valid, keeps it in the session
// cookie: HttpOnly (no script reads it), SameSite=Strict (no other site's
// page sends it), Secure over TLS, path /, so every page and every server
// of the cluster (they share the host's cookies, and check tokens against
// the same etcd) accept it.
func (u *UI) login(w http.ResponseWriter, r *http.Request) {
	next := safeNext(r.PostFormValue("next"))
	secret := strings.TrimSpace(r.PostFormValue("token"))
	if !u.cfg.Enforce {
		http.Redirect(w, r, next, http.StatusSeeOther)
		return
	}
	s := &session{Enforce: true, CSRF: u.ensureCSRF(w, r)}
	fail := func(msg string) {
		u.render(w, r, s, http.StatusUnauthorized, "login", &view{Title: "Log in", Data: loginData{Next: next, Why: msg}})
	}
	if secret == "" || u.cfg.Tokens == nil {
		fail("Give a token (tandem acl token create prints one).")
		return
	}
	tok, err := u.cfg.Tokens.Authenticate(r.Context(), secret)
	if err != nil {
		msg := "That token is unknown, deleted or expired."
		if !errors.Is(err, acl.ErrNoToken) && !errors.Is(err, acl.ErrExpired) {
			msg = "The token cannot be checked right now: " + err.Error()
		}
		u.log.Info("ui login refused", "remote", r.RemoteAddr, "reason", msg)
		fail(msg)
		return
	}
	maxAge := 0 // a browser-session cookie
	if tok.ExpiresAt != nil {
		maxAge = int(tok.ExpiresAt.Sub(u.cfg.Now()).Seconds())
	}
	http.SetCookie(w, &http.Cookie{Name: u.tokenCookie(), Value: secret, Path: "/", HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode, MaxAge: maxAge})
	u.log.Info("ui login", "token", tok.Name, "policy", tok.Policy, "remote", r.RemoteAddr)
	setFlash(w, r, fmt.Sprintf("Logged in with %s.", tok.Describe()), false)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (u *UI) logout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: u.tokenCookie(), Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
}

// safeNext keeps a post-login destination on this UI: a path under /ui/,
// never another host ("//evil", "/\evil").
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/ui/") || strings.ContainsAny(next, "\\\r\n") || strings.HasPrefix(next, "//") {
		return "/ui/"
	}
	return next
}
