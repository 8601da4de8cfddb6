package caddymodule

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-agentwrit/caddy-agentwrit/scopemap"
)

// Caddyfile parsing of the global option and both directives, in one
// place. Directive order is registered so that no `order` option is
// needed: agentwrit before basic_auth, agentwrit_broker beside respond.
func init() {
	httpcaddyfile.RegisterGlobalOption("agentwrit", parseGlobalOption)
	httpcaddyfile.RegisterHandlerDirective("agentwrit", parseHandler)
	httpcaddyfile.RegisterDirectiveOrder("agentwrit", httpcaddyfile.Before, "basic_auth")
	httpcaddyfile.RegisterHandlerDirective("agentwrit_broker", parseBrokerHandler)
	httpcaddyfile.RegisterDirectiveOrder("agentwrit_broker", httpcaddyfile.Before, "respond")
	httpcaddyfile.RegisterHandlerDirective("agentwrit_console", parseConsole)
	httpcaddyfile.RegisterDirectiveOrder("agentwrit_console", httpcaddyfile.Before, "respond") // so right after agentwrit_broker
}

var (
	_ caddyfile.Unmarshaler = (*App)(nil)
	_ caddyfile.Unmarshaler = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*BrokerHandler)(nil)
)

// Errors name the option and say what is wrong, and never print its
// arguments: those of admin_secret, client_secret and database (a URL with
// its password) are credentials, and the wrong number of them is most
// often a secret with a space in it, split in two. Caddy's d.ArgErr, which
// prints the token it stopped at, is not used. A secret expanded from
// {$VAR} with a line break in it goes on to the next line, whose first
// token then reads as an option: unknown options are named only when they
// look like an option name.

// argCountErr says that option name takes want, without its arguments.
func argCountErr(d *caddyfile.Dispenser, name, want string) error {
	return d.Errf("%s takes %s", name, want)
}

// unknownOption refuses the option name in a block of kind.
func unknownOption(d *caddyfile.Dispenser, kind, name string) error {
	switch {
	case name == "{":
		return d.Errf("unexpected block in %s: the option before it takes none", kind)
	case optionLike(name):
		return d.Errf("unrecognized %s %q", kind, name)
	}
	return d.Errf("unrecognized %s (not shown: it does not look like an option name, and may be the rest of a value on the line before)", kind)
}

// optionLike reports whether s could be an option name: lower case
// letters, digits and underscores, starting with a letter.
func optionLike(s string) bool {
	if s == "" || len(s) > 32 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for _, c := range []byte(s) {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// oneArg reads the single argument of the current option.
func oneArg(d *caddyfile.Dispenser) (string, error) {
	name := d.Val()
	args := d.RemainingArgs()
	if len(args) != 1 {
		return "", argCountErr(d, name, fmt.Sprintf("exactly one argument, not %d (quote a value with spaces)", len(args)))
	}
	return args[0], nil
}

// durationArg reads a duration argument.
func durationArg(d *caddyfile.Dispenser) (caddy.Duration, error) {
	name := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return 0, d.Errf("%s: %v", name, err)
	}
	return caddy.Duration(dur), nil
}

// choiceArg reads an argument that must be one of choices.
func choiceArg(d *caddyfile.Dispenser, choices ...string) (string, error) {
	name := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return "", err
	}
	for _, c := range choices {
		if v == c {
			return v, nil
		}
	}
	return "", d.Errf("%s must be %s, not %q", name, strings.Join(choices, " or "), v)
}

// UnmarshalCaddyfile sets up the app from the global option:
//
//	agentwrit {
//		admin_secret    <secret or bcrypt hash>
//		trust_domain    <domain>
//		issuer          <iss>
//		audience        <aud>
//		default_ttl     <duration>
//		max_ttl         <duration>
//		admin_token_ttl <duration>
//		app_token_ttl   <duration>
//		database        <path or postgres:// URL> [{
//			pool_size         <connections>
//			statement_timeout <duration>
//		}]
//		max_revocation_staleness <duration>
//		audit_retention <duration>
//		signing_key     <pem file>
//	}
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // option name
	if d.NextArg() {
		return argCountErr(d, "the agentwrit global option", "no arguments, only a block")
	}
	for d.NextBlock(0) {
		name := d.Val()
		if !optionLike(name) {
			return unknownOption(d, "agentwrit option", name)
		}
		strs := map[string]*string{
			"admin_secret": &a.AdminSecret, "trust_domain": &a.TrustDomain, "issuer": &a.Issuer,
			"audience": &a.Audience, "signing_key": &a.SigningKey,
		}
		durs := map[string]*caddy.Duration{
			"default_ttl": &a.DefaultTTL, "max_ttl": &a.MaxTTL, "admin_token_ttl": &a.AdminTokenTTL,
			"app_token_ttl": &a.AppTokenTTL, "max_revocation_staleness": &a.MaxRevocationStaleness,
			"audit_retention": &a.AuditRetention,
		}
		if p, ok := strs[name]; ok {
			args := d.RemainingArgs()
			switch {
			case name == "admin_secret" && len(args) == 0:
				return d.Err("admin_secret needs a value; if you wrote {$AGENTWRIT_ADMIN_SECRET}, that environment variable is empty or unset (prefer {env.AGENTWRIT_ADMIN_SECRET}, read when the config loads)")
			case len(args) != 1:
				return argCountErr(d, name, fmt.Sprintf("exactly one argument, not %d (quote a value with spaces)", len(args)))
			}
			*p = args[0]
			continue
		}
		if p, ok := durs[name]; ok {
			v, err := durationArg(d)
			if err != nil {
				return err
			}
			*p = v
			continue
		}
		if name != "database" {
			return unknownOption(d, "agentwrit option", name)
		}
		v, err := oneArg(d)
		if err != nil {
			return err
		}
		a.Database = v
		for nesting := d.Nesting(); d.NextBlock(nesting); {
			switch d.Val() {
			case "pool_size":
				v, err := oneArg(d)
				if err != nil {
					return err
				}
				n, perr := strconv.Atoi(v)
				if perr != nil || n < 1 {
					return d.Errf("pool_size must be a positive integer, not %q", v)
				}
				a.DatabasePoolSize = n
			case "statement_timeout":
				if a.DatabaseStatementTimeout, err = durationArg(d); err != nil {
					return err
				}
			default:
				return unknownOption(d, "database option", d.Val())
			}
		}
	}
	return nil
}

func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "agentwrit", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile: the directive takes no arguments.
//
//	agentwrit_broker [<matcher>]
func (h *BrokerHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() || d.NextBlock(0) {
		return d.Err("agentwrit_broker takes no arguments; configure the broker in the agentwrit global option")
	}
	return nil
}

func parseBrokerHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(BrokerHandler)
	return m, m.UnmarshalCaddyfile(h.Dispenser)
}

// parseConsole sets up the operator console:
//
//	agentwrit_console [<remote broker URL>]
//
// Without an argument it talks to the embedded broker of the agentwrit
// global option.
func parseConsole(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	d := h.Dispenser
	d.Next() // directive name
	m := new(ConsoleHandler)
	switch args := d.RemainingArgs(); len(args) {
	case 0:
	case 1:
		m.Remote = args[0]
		if _, err := parseRemote(m.Remote); err != nil {
			return nil, d.Err(err.Error())
		}
	default:
		return nil, argCountErr(d, "agentwrit_console", "at most one argument, the remote broker's URL")
	}
	if d.NextBlock(0) {
		return nil, d.Errf("agentwrit_console takes no block")
	}
	return m, nil
}

// UnmarshalCaddyfile sets up the handler:
//
//	agentwrit [<matcher>] {
//		broker   embedded | <url> [{ ... }]      (see parseBrokerOption)
//		require  <METHODS> <pattern> <scope...>
//		public   <METHODS> <pattern>
//		unmapped deny|authenticated
//		forward_token on|off
//		mode     enforce|report
//		refuse_body_on <METHODS>|off
//		usage    on|off
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return argCountErr(d, "agentwrit", "no arguments besides a matcher, only a block")
	}
	for d.NextBlock(0) {
		var err error
		switch opt := d.Val(); opt {
		case "require", "public":
			rule, err := scopemap.ParseRule(append([]string{opt}, d.RemainingArgs()...))
			if err != nil {
				return d.Errf("%v", err)
			}
			h.Rules = append(h.Rules, rule)
		case "broker":
			h.Broker, err = parseBrokerOption(d)
		case "unmapped":
			h.Unmapped, err = choiceArg(d, UnmappedDeny, UnmappedAuthenticated)
		case "mode":
			h.Mode, err = choiceArg(d, ModeEnforce, ModeReport)
		case "forward_token", "usage":
			var v string
			if v, err = choiceArg(d, "on", "off"); err == nil {
				on := v == "on"
				if opt == "usage" {
					h.Usage = &on
				} else {
					h.ForwardToken = &on
				}
			}
		case "refuse_body_on":
			var v string
			if v, err = oneArg(d); err == nil {
				methods := []string{}
				if v != "off" {
					methods = strings.Split(v, ",")
				}
				h.RefuseBodyOn = &methods
			}
		default:
			return unknownOption(d, "agentwrit subdirective", opt)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func parseHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	return m, m.UnmarshalCaddyfile(h.Dispenser)
}

// parseBrokerOption parses the broker subdirective of agentwrit, the
// dispenser on "broker":
//
//	broker embedded
//	broker <url> [{
//		verify             validate|local  # default validate
//		cache_ttl          <duration>   # 0: no caching
//		cache_size         <entries>
//		negative_cache_ttl <duration>   # 0: no negative caching
//		timeout            <duration>
//		stale_if_error     <duration>
//		client_call_rate   <per second>|off
//		tls_ca             <pem file>
//		tls_client_cert    <cert pem file> <key pem file>
//		client_id          <app client ID>  # verify local only, required
//		client_secret      <app secret>     # verify local only, required
//		max_staleness      <duration>       # verify local only, > 2s
//		fallback           validate|off     # verify local only
//	}]
//
// It returns nil for embedded.
func parseBrokerOption(d *caddyfile.Dispenser) (*RemoteBroker, error) {
	if !d.NextArg() {
		return nil, d.Err("broker needs 'embedded' or the URL of a remote broker")
	}
	target := d.Val()
	if d.NextArg() {
		return nil, argCountErr(d, "broker", "one argument: embedded or the broker's URL")
	}
	nesting := d.Nesting()
	if target == "embedded" {
		if d.NextBlock(nesting) {
			return nil, d.Err("broker embedded takes no options")
		}
		return nil, nil
	}
	rb := &RemoteBroker{URL: target}
	one := func(name string) error { return argCountErr(d, "broker "+name, "exactly one argument") }
	duration := func(name string, allowZero bool) (caddy.Duration, error) {
		if !d.NextArg() {
			return 0, one(name)
		}
		v, err := caddy.ParseDuration(d.Val())
		if err != nil {
			return 0, d.Errf("broker %s: %v", name, err)
		}
		if v < 0 || (v == 0 && !allowZero) {
			return 0, d.Errf("broker %s must be positive, not %s", name, d.Val())
		}
		if d.NextArg() {
			return 0, one(name)
		}
		return caddy.Duration(v), nil
	}
	seen := map[string]bool{}
	for d.NextBlock(nesting) {
		opt := d.Val()
		if !optionLike(opt) {
			return nil, unknownOption(d, "broker option", opt)
		}
		if seen[opt] {
			return nil, d.Errf("broker option %s given twice", opt)
		}
		seen[opt] = true
		var err error
		switch opt {
		case "cache_ttl", "negative_cache_ttl":
			var v caddy.Duration
			if v, err = duration(opt, true); err == nil {
				if opt == "cache_ttl" {
					rb.CacheTTL = &v
				} else {
					rb.NegativeCacheTTL = &v
				}
			}
		case "timeout":
			rb.Timeout, err = duration(opt, false)
		case "stale_if_error":
			rb.StaleIfError, err = duration(opt, true)
		case "cache_size":
			if !d.NextArg() {
				return nil, one(opt)
			}
			n, perr := strconv.Atoi(d.Val())
			if perr != nil || n < 1 {
				return nil, d.Errf("broker cache_size must be a positive integer, not %q (cache_ttl 0 turns caching off)", d.Val())
			}
			rb.CacheSize = n
			if d.NextArg() {
				return nil, one(opt)
			}
		case "tls_ca":
			if !d.NextArg() {
				return nil, one(opt)
			}
			rb.TLSCA = d.Val()
			if d.NextArg() {
				return nil, one(opt)
			}
		case "tls_client_cert":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return nil, d.Err("broker tls_client_cert takes two arguments: the certificate file and the key file")
			}
			rb.TLSClientCert = &RemoteClientCert{Cert: args[0], Key: args[1]}
		default:
			var known bool
			if known, err = rb.unmarshalVerifyOption(d, opt); !known {
				return nil, unknownOption(d, "broker option", opt)
			}
		}
		if err != nil {
			return nil, err
		}
	}
	if err := rb.checkVerifyOptions(d); err != nil {
		return nil, err
	}
	return rb, nil
}
