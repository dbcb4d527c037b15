package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandemhq/tandem/internal/pki"
)

// Default validities: a CA lives long, its certificates are rotated yearly.
const (
	defaultCADays   = 5 * 365
	defaultCertDays = 365
	maxDays         = 100 * 365
)

func newTLSCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tls",
		Short: "Make a cluster's CA and certificates, and inspect certificates",
		Long: `Make a cluster's certificate authority and the certificates of its servers,
agents and users, and inspect certificates. Each certificate names its cluster,
role (server, agent or cli) and ID in one URI, spiffe://tandem/<cluster>/<role>/<id>
(docs/SECURITY.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	ca := &cobra.Command{
		Use:   "ca",
		Short: "Make a cluster's certificate authority",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	ca.AddCommand(newTLSCACreateCmd())
	cert := &cobra.Command{
		Use:   "cert",
		Short: "Make and inspect certificates",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cert.AddCommand(newTLSCertCreateCmd(), newTLSCertInfoCmd())
	cmd.AddCommand(ca, cert)
	return cmd
}

// tlsDays turns --days into a duration, refusing what no one means.
func tlsDays(days int) (time.Duration, error) {
	if days < 1 || days > maxDays {
		return 0, usagef("--days %d: must be from 1 to %d", days, maxDays)
	}
	return time.Duration(days) * 24 * time.Hour, nil
}

// pkiError makes pki's complaints about the request usage errors (exit 2);
// anything else (a file that exists, one that cannot be read) stays as is.
func pkiError(err error) error {
	if errors.Is(err, pki.ErrInvalid) {
		return usagef("%s", strings.TrimPrefix(err.Error(), pki.ErrInvalid.Error()+": "))
	}
	return err
}

func newTLSCACreateCmd() *cobra.Command {
	var (
		dir, cluster string
		days         int
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Make a new CA for a cluster: ca.pem and ca-key.pem",
		Long: `Make a new certificate authority for a cluster and write its certificate to
DIR/ca.pem and its key to DIR/ca-key.pem (mode 0600). Every process of the
cluster trusts ca.pem; keep ca-key.pem where certificates are made, and nowhere
else. An existing CA is never overwritten.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := tlsDays(days)
			if err != nil {
				return err
			}
			ca, err := pki.CreateCA(dir, cluster, d)
			if err != nil {
				return pkiError(err)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "CA of cluster %s, valid until %s:\n", ca.Cluster, fmtTime(ca.Cert.NotAfter))
			fmt.Fprintf(w, "  %s  (give it to every server, agent and client)\n", filepath.Join(dir, pki.CACertFile))
			fmt.Fprintf(w, "  %s  (secret: it signs the cluster's certificates)\n", filepath.Join(dir, pki.CAKeyFile))
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&dir, "dir", ".", "directory to write ca.pem and ca-key.pem in (created if missing)")
	fl.StringVar(&cluster, "cluster", "default", "the cluster's name, as servers' --cluster")
	fl.IntVar(&days, "days", defaultCADays, "days the CA is valid")
	return cmd
}

func newTLSCertCreateCmd() *cobra.Command {
	var (
		server, agent, cli bool
		id, dir, out       string
		dnsNames, ips      []string
		days               int
	)
	cmd := &cobra.Command{
		Use:   "create --server|--agent|--cli --id ID",
		Short: "Make a certificate for a server, an agent or a CLI user, signed by the cluster's CA",
		Long: `Make a certificate signed by the CA in --dir (ca.pem, ca-key.pem) for one server
(--server --id rm1), agent (--agent --id worker1) or CLI user (--cli --id alice),
and write it and its key (mode 0600) to DIR/NAME.pem and DIR/NAME-key.pem (NAME
defaults to <role>-<id>). Existing files are never overwritten.

Server and agent certificates serve TLS and act as clients; they are valid for
localhost, 127.0.0.1 and ::1 and for the host names (--dns) and addresses (--ip)
given, which clients check. A cli certificate only acts as a client.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var roles []pki.Role
			for _, r := range []struct {
				role pki.Role
				set  bool
			}{{pki.RoleServer, server}, {pki.RoleAgent, agent}, {pki.RoleCLI, cli}} {
				if r.set {
					roles = append(roles, r.role)
				}
			}
			switch {
			case len(roles) == 0:
				return usagef("give one of --server, --agent or --cli")
			case len(roles) > 1:
				return usagef("give only one of --server, --agent or --cli: a certificate has one role")
			case id == "":
				return usagef("--id is required: the server's or agent's --id, or the user's name for --cli")
			case roles[0] == pki.RoleCLI && (len(dnsNames) > 0 || len(ips) > 0):
				return usagef("--dns and --ip are for --server and --agent: a cli certificate only acts as a client")
			}
			d, err := tlsDays(days)
			if err != nil {
				return err
			}
			var addrs []net.IP
			for _, s := range ips {
				ip := net.ParseIP(strings.TrimSpace(s))
				if ip == nil {
					return usagef("--ip %q is not an IP address, such as 10.0.0.7 or fd00::7", s)
				}
				addrs = append(addrs, ip)
			}
			ca, err := pki.LoadCA(dir)
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("%w (make one with tandem tls ca create --dir %s)", err, dir)
				}
				return err
			}
			var opts []pki.IssueOption
			if out != "" {
				opts = append(opts, pki.WithOutput(dir, out))
			}
			is, err := pki.Issue(ca, roles[0], id, dnsNames, addrs, d, opts...)
			if err != nil {
				return pkiError(err)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%s, valid until %s:\n", is.Identity, fmtTime(is.Cert.NotAfter))
			fmt.Fprintf(w, "  %s\n  %s  (secret)\n", is.CertFile, is.KeyFile)
			if is.Cert.NotAfter.Equal(ca.Cert.NotAfter) {
				fmt.Fprintf(cmd.ErrOrStderr(), "note: --days %d would outlive the CA: the certificate expires with it, %s\n", days, fmtTime(ca.Cert.NotAfter))
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&server, "server", false, "a server's certificate")
	fl.BoolVar(&agent, "agent", false, "an agent's certificate")
	fl.BoolVar(&cli, "cli", false, "a CLI user's certificate (client only)")
	fl.StringVar(&id, "id", "", "the server's or agent's ID, or the user's name")
	fl.StringSliceVar(&dnsNames, "dns", nil, "more host names the certificate is valid for, comma-separated")
	fl.StringSliceVar(&ips, "ip", nil, "more IP addresses the certificate is valid for, comma-separated")
	fl.StringVar(&dir, "dir", ".", "directory of the CA (ca.pem, ca-key.pem), where the certificate is written too")
	fl.StringVar(&out, "out", "", "base name of the files written (default <role>-<id>)")
	fl.IntVar(&days, "days", defaultCertDays, "days the certificate is valid (at most until the CA expires)")
	return cmd
}

// certInfo is what tls cert info tells of one certificate.
type certInfo struct {
	Subject       string    `json:"subject"`
	Issuer        string    `json:"issuer"`
	Serial        string    `json:"serial"`
	CA            bool      `json:"ca"`
	Identity      string    `json:"identity,omitempty"`
	Cluster       string    `json:"cluster,omitempty"`
	Role          string    `json:"role,omitempty"`
	ID            string    `json:"id,omitempty"`
	IdentityError string    `json:"identity_error,omitempty"`
	DNSNames      []string  `json:"dns_names,omitempty"`
	IPAddresses   []string  `json:"ip_addresses,omitempty"`
	URIs          []string  `json:"uris,omitempty"`
	Usages        []string  `json:"usages,omitempty"`
	NotBefore     time.Time `json:"not_before"`
	NotAfter      time.Time `json:"not_after"`
	Status        string    `json:"status"` // valid, expired, not yet valid
	// With --ca: whether it verifies against that CA now.
	Verified    *bool  `json:"verified,omitempty"`
	VerifyError string `json:"verify_error,omitempty"`
}

type certFileInfo struct {
	File         string     `json:"file"`
	CA           string     `json:"ca,omitempty"`
	Certificates []certInfo `json:"certificates"`
}

func newTLSCertInfoCmd() *cobra.Command {
	var caFile string
	var format *outputFormat
	cmd := &cobra.Command{
		Use:   "info FILE",
		Short: "Show a certificate: its identity, names, validity, and whether it verifies against a CA",
		Long: `Show each certificate in FILE: subject, tandem identity (cluster, role, ID),
host names and addresses, validity and whether it has expired. With --ca, also
check it against that CA now (chain, validity, identity and cluster); a
certificate that fails exits with status 1.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			certs, err := pki.ReadCerts(args[0])
			if err != nil {
				return err
			}
			info := certFileInfo{File: args[0], CA: caFile}
			var v *certVerifier
			if caFile != "" {
				if v, err = newCertVerifier(caFile); err != nil {
					return err
				}
			}
			now := time.Now()
			failed := 0
			for _, c := range certs {
				ci := describeCert(c, now)
				if v != nil {
					ok := true
					if err := v.verify(c, now); err != nil {
						ok, ci.VerifyError = false, err.Error()
						failed++
					}
					ci.Verified = &ok
				}
				info.Certificates = append(info.Certificates, ci)
			}
			w := cmd.OutOrStdout()
			if *format == outputJSON {
				err = writeJSON(w, info)
			} else {
				err = printCertInfo(w, info, now)
			}
			if err != nil {
				return err
			}
			if failed > 0 {
				return fmt.Errorf("%s: %d of %d certificates do not verify against %s", args[0], failed, len(certs), caFile)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&caFile, "ca", "", "CA certificate file to verify against (e.g. ca.pem)")
	format = addOutputFlag(cmd)
	return cmd
}

func describeCert(c *x509.Certificate, now time.Time) certInfo {
	ci := certInfo{
		Subject:   c.Subject.String(),
		Issuer:    c.Issuer.String(),
		Serial:    c.SerialNumber.Text(16),
		CA:        c.IsCA,
		DNSNames:  c.DNSNames,
		NotBefore: c.NotBefore,
		NotAfter:  c.NotAfter,
		Status:    "valid",
	}
	for _, ip := range c.IPAddresses {
		ci.IPAddresses = append(ci.IPAddresses, ip.String())
	}
	for _, u := range c.URIs {
		ci.URIs = append(ci.URIs, u.String())
	}
	for _, u := range c.ExtKeyUsage {
		ci.Usages = append(ci.Usages, usageName(u))
	}
	switch {
	case now.Before(c.NotBefore):
		ci.Status = "not yet valid"
	case now.After(c.NotAfter):
		ci.Status = "expired"
	}
	if c.IsCA {
		ci.Role = "ca"
		if cluster, err := pki.CACluster(c); err == nil {
			ci.Cluster = cluster
		} else {
			ci.IdentityError = err.Error()
		}
		return ci
	}
	if id, err := pki.FromCert(c); err == nil {
		ci.Identity, ci.Cluster, ci.Role, ci.ID = id.String(), id.Cluster, string(id.Role), id.ID
	} else {
		ci.IdentityError = err.Error()
	}
	return ci
}

func usageName(u x509.ExtKeyUsage) string {
	switch u {
	case x509.ExtKeyUsageServerAuth:
		return "server auth"
	case x509.ExtKeyUsageClientAuth:
		return "client auth"
	case x509.ExtKeyUsageAny:
		return "any"
	}
	return "other (" + strconv.Itoa(int(u)) + ")"
}

// certVerifier checks certificates against a CA file as a tandem process would:
// chain and validity now, a valid identity, and the CA's cluster.
type certVerifier struct {
	file     string
	pool     *x509.CertPool
	clusters map[string]bool
}

func newCertVerifier(file string) (*certVerifier, error) {
	cas, err := pki.ReadCerts(file)
	if err != nil {
		return nil, err
	}
	v := &certVerifier{file: file, pool: x509.NewCertPool(), clusters: map[string]bool{}}
	for _, ca := range cas {
		if !ca.IsCA {
			return nil, fmt.Errorf("--ca %s: %s is not a CA certificate", file, ca.Subject)
		}
		v.pool.AddCert(ca)
		if cluster, err := pki.CACluster(ca); err == nil {
			v.clusters[cluster] = true
		}
	}
	return v, nil
}

func (v *certVerifier) verify(c *x509.Certificate, now time.Time) error {
	_, err := c.Verify(x509.VerifyOptions{Roots: v.pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil || c.IsCA {
		return err
	}
	id, err := pki.FromCert(c)
	if err != nil {
		return err
	}
	if len(v.clusters) > 0 && !v.clusters[id.Cluster] {
		return fmt.Errorf("%w: %s, and %s is the CA of another", pki.ErrWrongCluster, id, v.file)
	}
	return nil
}

func printCertInfo(w io.Writer, info certFileInfo, now time.Time) error {
	for i, c := range info.Certificates {
		if i > 0 {
			fmt.Fprintln(w)
		}
		t := newTable(w)
		if len(info.Certificates) > 1 {
			t.row("certificate:", fmt.Sprintf("%d of %d in %s", i+1, len(info.Certificates), info.File))
		} else {
			t.row("file:", info.File)
		}
		t.row("subject:", c.Subject)
		t.row("issuer:", c.Issuer)
		t.row("serial:", c.Serial)
		if c.Identity != "" || c.CA {
			t.row("identity:", orDash(c.Identity))
			t.row("cluster:", orDash(c.Cluster))
			t.row("role:", c.Role)
			if !c.CA {
				t.row("id:", c.ID)
			}
		}
		if c.IdentityError != "" {
			t.row("identity:", "none: "+c.IdentityError)
		}
		t.row("dns names:", orDash(strings.Join(c.DNSNames, ", ")))
		t.row("ip addresses:", orDash(strings.Join(c.IPAddresses, ", ")))
		t.row("uris:", orDash(strings.Join(c.URIs, ", ")))
		t.row("usages:", orDash(strings.Join(c.Usages, ", ")))
		t.row("not before:", fmtTime(c.NotBefore))
		t.row("not after:", fmtTime(c.NotAfter))
		t.row("status:", certStatus(c, now))
		if c.Verified != nil {
			if *c.Verified {
				t.row("verified:", "yes, against "+info.CA)
			} else {
				t.row("verified:", "NO, against "+info.CA+": "+c.VerifyError)
			}
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	return nil
}

func certStatus(c certInfo, now time.Time) string {
	switch c.Status {
	case "expired":
		return "EXPIRED " + roughDuration(now.Sub(c.NotAfter)) + " ago"
	case "not yet valid":
		return "NOT YET VALID: starts in " + roughDuration(c.NotBefore.Sub(now))
	}
	return "valid, expires in " + roughDuration(c.NotAfter.Sub(now))
}

// roughDuration prints a duration as people count validity: days when there are
// a couple, else hours, else minutes.
func roughDuration(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return strconv.Itoa(int(d/(24*time.Hour))) + " days"
	case d >= 2*time.Hour:
		return strconv.Itoa(int(d/time.Hour)) + " hours"
	}
	return strconv.Itoa(int(d/time.Minute)) + " minutes"
}
